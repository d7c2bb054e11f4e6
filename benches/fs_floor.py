"""The floor of publishing K per-patient files: the plain system calls, no reading, no split.

    python benches/fs_floor.py --dir DIR --patients K [--file-bytes 9000]

In DIR (which must not exist; it is created): K staging files of --file-bytes bytes each, flat in
DIR/staging and named as mimic-eye stages them (open, one write, close); then patient_<id>/ and
patient_<id>/Hosp/ for each (two mkdir); each file renamed to patient_<id>/Hosp/labevents.csv;
then one sync, as mimic-eye's publish barrier is one syncfs. Prints one JSON line: patients,
seconds, and the process's user and system CPU seconds.

Python adds interpreter time to every call; user_s is that overhead (and the kernel's work is in
sys_s), so a user_s small against seconds says the floor is the file system's, not Python's.
"""
import argparse
import json
import os
import resource
import time


def floor(root, patients, file_bytes):
    """Creates and publishes `patients` files under root; returns the seconds it took."""
    staging = os.path.join(root, "staging")
    os.makedirs(staging)
    payload = b"x" * (file_bytes - 1) + b"\n"
    ids = [10_000_000 + i for i in range(patients)]
    start = time.perf_counter()
    for sid in ids:
        fd = os.open(os.path.join(staging, f"patient_{sid}%2FHosp%2Flabevents.csv"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, payload)
        os.close(fd)
    for sid in ids:
        patient = os.path.join(root, f"patient_{sid}")
        os.mkdir(patient)
        os.mkdir(os.path.join(patient, "Hosp"))
        os.rename(os.path.join(staging, f"patient_{sid}%2FHosp%2Flabevents.csv"), os.path.join(patient, "Hosp", "labevents.csv"))
    os.sync()
    return time.perf_counter() - start


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", required=True, help="a fresh folder on the file system to measure")
    ap.add_argument("--patients", type=int, required=True)
    ap.add_argument("--file-bytes", type=int, default=9000, help="bytes per patient file")
    a = ap.parse_args()
    os.makedirs(a.dir)
    before = resource.getrusage(resource.RUSAGE_SELF)
    secs = floor(a.dir, a.patients, a.file_bytes)
    after = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"patients": a.patients, "file_bytes": a.file_bytes, "seconds": round(secs, 3),
                      "user_s": round(after.ru_utime - before.ru_utime, 3), "sys_s": round(after.ru_stime - before.ru_stime, 3)}))


if __name__ == "__main__":
    main()
