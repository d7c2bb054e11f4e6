"""The per-patient split at two cohort sizes, against the file system's floor; see benches/scale.sh.

On compare.py's labevents-shaped `.csv` (the same worlds, reused from the work folder): mimic-eye
splits for the planted 3,000-subject cohort and for a big cohort (default 65,000, MIMIC-CXR's
patient count: the planted 3,000 plus other subjects of the table), alternating runs, and
fs_floor.py publishes as many files with plain system calls. What the big cohort costs beyond
the small one should be what creating and publishing the extra files costs on this disk:
target, 65,000-patient split <= 1.1x (3,000-patient split + floor(65,000) - floor(3,000)).
DuckDB splits the same table for both cohorts, once each, with a time limit.
"""
import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from compare import BYTES_PER_ROW, COHORT, SUBJECTS, empty_trash, peak_rss_of, set_aside, world  # noqa: E402

FS_FLOOR = os.path.join(HERE, "fs_floor.py")
DUCKDB_SPLIT = os.path.join(HERE, "duckdb_split.py")
# The calls that find, make and publish the per-patient files.
HOT_SYSCALLS = ("mkdir", "mkdirat", "rename", "renameat", "renameat2", "statx", "openat")


def other_subjects():
    """The subject ids synth gives the world's subjects outside the cohort (src/synth/mod.rs)."""
    return [11_000_000 + 1_013 * i + 7 for i in range(SUBJECTS - COHORT)]


def big_cohort(d, planted_csv, size):
    """Writes cohort-<size>.csv: the planted cohort plus other subjects of the table, evenly
    spaced over the table (as a real cohort's rows would be), so the split finds `size` patients."""
    path = os.path.join(d, f"cohort-{size}.csv")
    planted = [int(l) for l in open(planted_csv).read().split()[1:]]
    taken = set(planted)
    others = [s for s in other_subjects() if s not in taken]  # synth's two id ranges share one id
    extra = size - len(planted)
    if not 0 <= extra <= len(others):
        sys.exit(f"--big-cohort must be between {len(planted):,} and {len(planted) + len(others):,}")
    ids = planted + [others[k * len(others) // extra] for k in range(extra)]
    with open(path, "w") as f:
        f.write("subject_id\n" + "\n".join(map(str, ids)) + "\n")
    return path


def count_files(path):
    return sum(len(files) for _, _, files in os.walk(path))


def count_patients(path):
    return sum(1 for n in os.listdir(path) if n.startswith("patient_"))


def duckdb_split(table, cohort, out, timeout):
    """DuckDB's split under /usr/bin/time -v, killed (with its whole process group) after
    `timeout` seconds: (seconds or None, peak RSS bytes or None, error message or None)."""
    t0 = time.perf_counter()
    p = subprocess.Popen(["/usr/bin/time", "-v", sys.executable, DUCKDB_SPLIT, table, cohort, out],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.communicate()
        return None, None, f"killed after the {timeout:.0f} s limit"
    secs = time.perf_counter() - t0
    rss = next((int(l.split(":")[1]) * 1024 for l in err.splitlines() if "Maximum resident set size" in l), None)
    if p.returncode == 0:
        return secs, rss, None
    # What the script printed before time's report: the exception's last line says what failed.
    own = err.split("\tCommand being timed")[0].splitlines()
    own = [l for l in own if l.strip() and not l.startswith("Command exited") and not l.startswith("Command terminated")]
    return None, rss, (own[-1][:400] if own else f"exit status {p.returncode}")


def failing_syscalls(bin_, table, cohort, out, report):
    """One untimed split under `strace -f -c`: {syscall: (calls, errors)}, or a string saying why
    it could not run (no strace, or ptrace not allowed here)."""
    if not shutil.which("strace"):
        return "strace is not installed (apt-get install strace)"
    p = subprocess.run(["strace", "-f", "-c", "-o", report, bin_, "split", "--table", table, "--cohort", cohort, "--output", out],
                       capture_output=True, text=True)
    if p.returncode != 0 or not os.path.exists(report):
        return f"strace failed: {(p.stderr.strip().splitlines() or ['exit status %d' % p.returncode])[-1]}"
    counts = {}
    for line in open(report):
        f = line.split()
        # "% time  seconds  usecs/call  calls  [errors]  syscall"; errors is blank when 0.
        # The last line, "total", sums every call.
        if len(f) in (5, 6) and f[0][0].isdigit() and f[3].isdigit():
            counts[f[-1]] = (int(f[3]), int(f[4]) if len(f) == 6 else 0)
    return counts


def disk_needed(a):
    """Bytes this invocation writes: each missing world (about 2x its size: labevents and
    chartevents as .csv, both gzipped) and every big-cohort output, kept aside until the next
    invocation (a file of 4 KiB blocks and two folders of one block per patient)."""
    total = 0
    for size in a.sizes:
        if not os.path.exists(os.path.join(a.work, f"{a.order}-{size}g", "in", "synth-planted.json")):
            total += 2 * size * 1e9
        file_bytes = max(1, round(size * 1e9 / (SUBJECTS * BYTES_PER_ROW))) * BYTES_PER_ROW + 200
        outputs = 2 * a.runs + 1 + a.duckdb_runs  # splits and floors, the strace run, DuckDB
        total += outputs * a.big_cohort * (-(-file_bytes // 4096) * 4096 + 2 * 4096)
    return total


def median(values):
    return statistics.median(values) if values else None


def fmt(x, spec=",.2f"):
    return "—" if x is None else format(x, spec)


def run_size(a, size):
    """All measurements on one world; prints JSON lines as it goes, returns the summary."""
    d, files, planted = world(a.bin, a.work, size, a.order)
    table = files[("labevents", "csv")]
    cohorts = {COHORT: planted, a.big_cohort: big_cohort(d, planted, a.big_cohort)}
    header = open(table).readline()
    # The floor's files are as big as the split's per-patient files on average: one subject's
    # rows (every subject has the same number) plus the header.
    file_bytes = round(os.path.getsize(table) / SUBJECTS) + len(header)
    # Into the page cache first, as compare.py does: no run pays for reading the disk.
    with open(table, "rb") as f:
        while f.read(1 << 24):
            pass
    res = {(tool, k): {"s": [], "rss": []} for tool in ("mimic-eye", "floor") for k in cohorts}
    rows = None
    jobs = list(res)
    for run in range(a.runs):
        # Alternating order: neither cohort nor the floor always runs first or after the other.
        for tool, k in (jobs if run % 2 == 0 else jobs[::-1]):
            out = os.path.join(d, f"out-{tool}-{k}")
            set_aside(a.work, out)
            # The previous run's output is still dirty in the page cache: write it back now, or
            # this run's syncfs (and the floor's sync) would pay for it.
            os.sync()
            if tool == "mimic-eye":
                stdout, secs, rss = peak_rss_of([a.bin, "split", "--table", table, "--cohort", cohorts[k], "--output", out])
                rows = json.loads(stdout.strip().splitlines()[-1])["rows"]
                if run == 0 and count_patients(out) != k:
                    sys.exit(f"the {k:,}-subject cohort split into {count_patients(out):,} patients: "
                             "synth's subject ids are no longer the ones other_subjects() assumes")
            else:
                stdout, _, rss = peak_rss_of([sys.executable, FS_FLOOR, "--dir", out, "--patients", str(k), "--file-bytes", str(file_bytes)])
                floor = json.loads(stdout)
                secs = floor["seconds"]
                res[(tool, k)].setdefault("user_s", []).append(floor["user_s"])
            if run == 0:
                res[(tool, k)]["files"] = count_files(out)
            res[(tool, k)]["s"].append(secs)
            res[(tool, k)]["rss"].append(rss)
            print(json.dumps({"size_gb": size, "run": run, "tool": tool, "cohort": k, "seconds": round(secs, 3),
                              "peak_rss_mib": round(rss / 2**20, 1)}), flush=True)
            set_aside(a.work, out)
    for k in cohorts:
        entry = res[("duckdb", k)] = {"s": [], "rss": [], "errors": []}
        for _ in range(a.duckdb_runs):
            out = os.path.join(d, f"out-duckdb-{k}")
            set_aside(a.work, out)
            os.sync()
            secs, rss, error = duckdb_split(table, cohorts[k], out, a.duckdb_timeout)
            entry["files"] = count_files(out) if os.path.isdir(out) else 0
            if error:
                entry["errors"].append(error)
            else:
                entry["s"].append(secs)
            if rss:
                entry["rss"].append(rss)
            print(json.dumps({"size_gb": size, "tool": "duckdb", "cohort": k, "seconds": secs and round(secs, 3),
                              "peak_rss_mib": rss and round(rss / 2**20, 1), "files": entry["files"], "error": error}), flush=True)
            set_aside(a.work, out)
    syscalls = {}
    for k in cohorts:
        out = os.path.join(d, f"out-strace-{k}")
        set_aside(a.work, out)
        os.sync()
        syscalls[k] = failing_syscalls(a.bin, table, cohorts[k], out, os.path.join(d, f"strace-{k}.txt"))
        set_aside(a.work, out)
    return {"size": size, "rows": rows, "file_bytes": file_bytes, "cohorts": list(cohorts), "res": res, "syscalls": syscalls}


def report(s):
    """The tables and the target line for one world."""
    res, rows, (small, big) = s["res"], s["rows"], s["cohorts"]
    print(f"\n{s['size']:g} GB labevents .csv, {rows:,} rows; floor files {s['file_bytes']:,} bytes each")
    print("(files: every file under the output folder; mimic-eye's include its 3 state files)")
    print("| cohort | what | median s | rows/s | peak RSS MiB | files | notes |")
    print("|---:|---|---:|---:|---:|---:|---|")
    for tool in ("mimic-eye", "duckdb", "floor"):
        for k in (small, big):
            r = res[(tool, k)]
            med = median(r["s"])
            rss = max(r["rss"]) / 2**20 if r["rss"] else None
            notes = f"runs: {len(r['s'])}"
            if tool == "floor":
                notes += f"; Python's own CPU (user) {median(r['user_s']):.2f} s"
            if r.get("errors"):
                notes = f"FAILED: {r['errors'][0]}"
            rate = rows / med if med and tool != "floor" else None
            print(f"| {k:,} | {'fs_floor.py' if tool == 'floor' else tool} | {fmt(med)} | {fmt(rate, ',.0f')} | {fmt(rss, '.1f')} "
                  f"| {r.get('files', 0):,} | {notes} |")
    print("\nFailing system calls, one untimed mimic-eye split under strace -f -c (errors / calls):")
    if any(isinstance(v, str) for v in s["syscalls"].values()):
        print(f"  skipped: {next(v for v in s['syscalls'].values() if isinstance(v, str))}")
    else:
        print(f"| syscall | {small:,} patients | {big:,} patients |")
        print("|---|---:|---:|")
        for call in HOT_SYSCALLS + ("total",):
            cells = [f"{errors:,} / {calls:,}" for calls, errors in (s["syscalls"][k].get(call, (0, 0)) for k in (small, big))]
            print(f"| {call} | {' | '.join(cells)} |")
    split_small, split_big = median(res[("mimic-eye", small)]["s"]), median(res[("mimic-eye", big)]["s"])
    floor_small, floor_big = median(res[("floor", small)]["s"]), median(res[("floor", big)]["s"])
    bound = split_small + floor_big - floor_small
    print(f"\n- {big:,}-patient split <= 1.1x its floor ({small:,}-patient split time + floor({big:,}) - floor({small:,})): "
          f"{split_big:.2f} s vs {split_small:.2f} + {floor_big:.2f} - {floor_small:.2f} = {bound:.2f} s, "
          f"{split_big / bound:.2f}x: " + ("met" if split_big <= 1.1 * bound else "NOT met"))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--sizes", nargs="+", type=float, default=[8], help="GB of labevents (compare.py's worlds)")
    ap.add_argument("--order", choices=["grouped", "shuffled"], default="grouped")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--big-cohort", type=int, default=65_000, help="subjects in the big cohort (the planted 3,000 included)")
    ap.add_argument("--duckdb-runs", type=int, default=1, help="DuckDB runs per cohort (0: none)")
    ap.add_argument("--duckdb-timeout", type=float, default=1800, help="seconds before a DuckDB run is killed")
    a = ap.parse_args()
    os.makedirs(a.work, exist_ok=True)
    need, free = disk_needed(a), shutil.disk_usage(a.work).free
    print(f"needs about {need / 1e9:.1f} GB of disk in {a.work} ({free / 1e9:.1f} GB free)", flush=True)
    if need > free:
        sys.exit("not enough free disk: free some, or use smaller --sizes, --big-cohort or --runs")
    empty_trash(a.work)
    summaries = [run_size(a, size) for size in a.sizes]
    for s in summaries:
        report(s)
    # The trash stays, as in compare.py: the next invocation deletes it and waits.


if __name__ == "__main__":
    main()
