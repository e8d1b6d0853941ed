"""Deaggregates Kinesis records with the reference codec (PyPI aws-kinesis-agg).

stdin: JSON lines, one per Kinesis record as GetRecords returns it: {"pk": str, "data": base64}
stdout: JSON lines, one per user record: {"pk": str, "ehk": str|null, "data": base64}
"""
import base64
import datetime
import json
import sys

from aws_kinesis_agg.deaggregator import iter_deaggregate_records


def main():
    records = []
    for i, line in enumerate(sys.stdin):
        r = json.loads(line)
        records.append({
            "Data": base64.b64decode(r["data"]),
            "PartitionKey": r["pk"],
            "SequenceNumber": str(i),
            "ApproximateArrivalTimestamp": datetime.datetime(2026, 1, 1),
        })
    for user in iter_deaggregate_records(records, data_format="Boto3"):
        k = user["kinesis"]
        data = k["data"]
        if k.get("aggregated"):
            # Deaggregated user records come back base64-encoded, as Lambda delivers them.
            data = data.decode() if isinstance(data, bytes) else data
        else:
            # A record that is not an aggregate passes through as the raw bytes given.
            data = base64.b64encode(data).decode()
        print(json.dumps({"pk": k["partitionKey"], "ehk": k.get("explicitHashKey"), "data": data}))


main()
