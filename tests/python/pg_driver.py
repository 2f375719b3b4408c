"""psycopg (libpq) through the gateway, run as a job: `pg_driver.py HOST SCENARIO`.

Connects with an arbitrary user and no password (the gateway holds the real credentials) and
prints one JSON object describing what the driver saw. Every step records its outcome instead of
stopping, so the test can assert on each.
"""

import json
import sys
import threading
import time

import psycopg
from psycopg import errors

host, scenario = sys.argv[1], sys.argv[2]
out = {}


def connect():
    return psycopg.connect(host=host, port=5432, user="agent", dbname="app", connect_timeout=10)


def error_of(e):
    return {"sqlstate": e.sqlstate, "message": str(e.diag.message_primary), "type": type(e).__name__}


if scenario == "basic":
    with connect() as conn:
        out["server_user"] = conn.execute("select current_user").fetchone()[0]
        row = conn.execute("select id, email, card, note from users where id = %s", (1,)).fetchone()
        out["row"] = list(row)
        out["count"] = conn.execute("select count(*) from users").fetchone()[0]
        rows = conn.execute("select id, email from users order by id").fetchall()
        out["rows"] = [list(r) for r in rows]
        with conn.cursor(binary=True) as cur:
            cur.execute("select id, pin, ssn from users where id = %s", (2,))
            out["binary_row"] = list(cur.fetchone())
        conn.commit()

        # A refused statement inside a transaction aborts it like a server error would.
        conn.execute("insert into notes (body) values ('in the transaction')")
        try:
            conn.execute("delete from users")
            out["delete"] = "ran"
        except errors.InsufficientPrivilege as e:
            out["delete"] = error_of(e)
        out["status_after_refusal"] = conn.info.transaction_status.name
        try:
            conn.execute("select 1")
        except errors.InFailedSqlTransaction as e:
            out["next_statement"] = e.sqlstate
        conn.rollback()
        out["notes_after_rollback"] = conn.execute(
            "select count(*) from notes where body = 'in the transaction'"
        ).fetchone()[0]
        conn.commit()

        try:
            conn.execute("drop table users")
        except errors.InsufficientPrivilege as e:
            out["drop"] = error_of(e)
        conn.rollback()

        # Server-side cursor (DECLARE/FETCH) and pipeline mode.
        with conn.cursor(name="by_id") as cur:
            cur.execute("select id from users where id > %s order by id", (0,))
            out["named_cursor"] = [r[0] for r in cur.fetchmany(2)]
        conn.commit()
        with conn.pipeline():
            results = [conn.execute("select %s::int * 2", (i,)) for i in range(3)]
        out["pipeline"] = [r.fetchone()[0] for r in results]
        conn.commit()

        # COPY out (masked) and in.
        with conn.cursor() as cur:
            with cur.copy("COPY users (id, email) TO STDOUT") as copy:
                out["copy_out"] = [list(r) for r in copy.rows()]
            with cur.copy("COPY notes (body) FROM STDIN") as copy:
                copy.write_row(("copied in",))
        conn.commit()
        out["copied_in"] = conn.execute(
            "select count(*) from notes where body = 'copied in'"
        ).fetchone()[0]

elif scenario in ("cancel", "cancel-safe"):
    # "cancel": PQcancel, a plain connection whatever sslmode says; "cancel-safe": libpq >= 17's
    # PQcancelConn, which negotiates encryption as the session did (SSLRequest first).
    with connect() as conn:
        out["ssl_in_use"] = conn.pgconn.ssl_in_use
        result = {}

        def sleeper():
            started = time.monotonic()
            try:
                conn.execute("select pg_sleep(30)")
                result["outcome"] = "completed"
            except errors.QueryCanceled as e:
                result["outcome"] = e.sqlstate
            result["seconds"] = time.monotonic() - started

        t = threading.Thread(target=sleeper)
        t.start()
        time.sleep(1.5)
        if scenario == "cancel":
            conn.cancel()
        else:
            conn.cancel_safe(timeout=10)
        t.join(timeout=20)
        out["sleep"] = result
        conn.rollback()
        out["after"] = conn.execute("select 'still usable'").fetchone()[0]

print(json.dumps(out, default=str))
