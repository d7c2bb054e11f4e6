"""DuckDB doing mimic-eye's per-patient split: one CSV per cohort subject.

    python duckdb_split.py TABLE COHORT_CSV OUTDIR
Prints one JSON line: rows, seconds, rows_per_second, peak_rss_bytes.
"""
import json
import resource
import sys
import time

import duckdb

table, cohort, out = sys.argv[1:4]
con = duckdb.connect()
con.execute("SET threads = 2")
con.execute("SET preserve_insertion_order = true")
# Spill files beside the output (a killed run leaves them there, not in the caller's folder).
con.execute(f"SET temp_directory = '{out}.duckdb-tmp'")
start = time.perf_counter()
# all_varchar: like mimic-eye, values are copied, not parsed (and no type sniffing can fail);
# ignore_errors: the synthetic tables plant malformed rows, which mimic-eye keeps as rejects.
rows = con.execute(
    f"""
    COPY (
        SELECT t.* FROM read_csv('{table}', header = true, all_varchar = true, delim = ',', quote = '"', escape = '"', ignore_errors = true) t
        WHERE t.subject_id IN (SELECT CAST(subject_id AS VARCHAR) FROM read_csv('{cohort}', header = true, all_varchar = true))
    ) TO '{out}' (FORMAT CSV, HEADER, PARTITION_BY (subject_id), OVERWRITE_OR_IGNORE)
    """
).fetchone()[0]
seconds = time.perf_counter() - start
print(json.dumps({
    "rows_written": rows,
    "seconds": round(seconds, 3),
    "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
}))
