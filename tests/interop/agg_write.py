"""Aggregates user records with the reference codec (PyPI aws-kinesis-agg).

stdin: JSON lines {"pk": str, "ehk": str|null, "data": base64}
stdout: JSON lines, one per Kinesis record: {"pk": str, "ehk": str|null, "data": base64}
argv[1]: max aggregate size in bytes
"""
import base64
import json
import sys

from aws_kinesis_agg.aggregator import RecordAggregator


def emit(agg_record):
    pk, ehk, data = agg_record.get_contents()
    print(json.dumps({"pk": pk, "ehk": ehk, "data": base64.b64encode(data).decode()}))


def main():
    aggregator = RecordAggregator(max_size=int(sys.argv[1]))
    for line in sys.stdin:
        r = json.loads(line)
        full = aggregator.add_user_record(r["pk"], base64.b64decode(r["data"]), r["ehk"])
        if full is not None:
            emit(full)
    if aggregator.get_num_user_records() > 0:
        emit(aggregator.clear_and_get())


main()
