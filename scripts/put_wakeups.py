#!/usr/bin/env python3
"""`kpl put` at a paced line rate against `kpl sim`: CPU, context switches and wake-ups per
million lines, for several kpl binaries alternating in one run (issue 18, item 3).

    scripts/put_wakeups.py --rate 3000 --lines 30000 --rounds 2 A=path/to/kpl B=other/kpl [-- put args]

The lines are JSON, ~100 bytes, written and flushed one at a time at --rate (a trickle, as a
service's log lines arrive). Each put runs under /usr/bin/time: CPU and context switches of
its whole process (all threads)."""
import argparse, json, os, re, socket, subprocess, sys, time

def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=float, default=3000)
    ap.add_argument("--lines", type=int, default=30000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--sim", default=None, help="kpl binary that runs the sim (default: the first)")
    ap.add_argument("bins", nargs="+", help="NAME=path/to/kpl")
    ap.add_argument("--put-args", default="", help="extra put arguments")
    a = ap.parse_args()
    bins = [b.split("=", 1) for b in a.bins]
    port = free_port()
    sim = subprocess.Popen([a.sim or bins[0][1], "sim", "--port", str(port), "--stream", "s:8"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.5)
    env = dict(os.environ, AWS_ACCESS_KEY_ID="x", AWS_SECRET_ACCESS_KEY="x", AWS_REGION="us-east-1")
    rows = []
    try:
        for r in range(a.rounds):
            for name, path in bins:
                cmd = ["/usr/bin/time", "-f", "%U %S %w %c", path, "put", "--stream", "s",
                       "--endpoint-url", f"http://127.0.0.1:{port}", "--quiet"] + a.put_args.split()
                p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, env=env)
                start = time.monotonic()
                for i in range(a.lines):
                    due = start + i / a.rate
                    now = time.monotonic()
                    if due > now:
                        time.sleep(due - now)
                    line = json.dumps({"i": i, "user": f"user-{i % 1000:04d}", "event": "click",
                                       "pad": "x" * 40}) + "\n"
                    p.stdin.write(line.encode()); p.stdin.flush()
                took = time.monotonic() - start
                p.stdin.close()
                err = p.stderr.read().decode()
                p.wait()
                m = re.findall(r"^([\d.]+) ([\d.]+) (\d+) (\d+)$", err, re.M)
                user, sys_, vol, invol = m[-1]
                cpu = float(user) + float(sys_)
                per_m = 1e6 / a.lines
                rows.append((r, name, a.lines / took, cpu * per_m, int(vol) * per_m, int(invol) * per_m))
                print(f"round {r} {name}: {a.lines / took:.0f} lines/s, CPU {cpu * per_m:.2f} s/M lines, "
                      f"voluntary ctx switches {int(vol) * per_m:.0f}/M, involuntary {int(invol) * per_m:.0f}/M",
                      flush=True)
    finally:
        sim.kill()
    print(json.dumps(rows))

main()
