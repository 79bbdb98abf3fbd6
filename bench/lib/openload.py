#!/usr/bin/env python3
"""Open-model write load: POSTs `text=PREFIX-N` at a fixed arrival rate whatever the answers
take (a stall shows as latency, measured from the intended send time, as wrk2 does), to the
first of several front doors that accepts the connection (a client given every node's address
by DNS tries the next when one refuses). Runs until SIGTERM, then waits for the requests under
way and prints one line per request:

    INTENDED_UNIX_S DONE_UNIX_S STATUS TEXT      (STATUS 0: no answer)

usage: openload.py RATE PREFIX URL [URL...]
"""
import concurrent.futures
import signal
import sys
import threading
import time
import urllib.error
import urllib.request

rate, prefix, urls = float(sys.argv[1]), sys.argv[2], sys.argv[3:]
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
lock = threading.Lock()
results = []


def one(n, intended):
    text = f"{prefix}-{n}"
    status = 0
    for i in range(len(urls)):
        url = urls[(n + i) % len(urls)]
        try:
            r = urllib.request.urlopen(
                urllib.request.Request(url, data=f"text={text}".encode(), method="POST"),
                timeout=15,
            )
            status = r.status
            break
        except urllib.error.HTTPError as e:
            status = e.code
            break
        except (ConnectionRefusedError, urllib.error.URLError) as e:
            reason = getattr(e, "reason", e)
            if isinstance(reason, ConnectionRefusedError) or isinstance(e, ConnectionRefusedError):
                continue  # this address is down: the next one
            break
        except Exception:
            break
    with lock:
        results.append((intended, time.time(), status, text))


pool = concurrent.futures.ThreadPoolExecutor(max_workers=256)
start = time.time()
n = 0
while not stop.is_set():
    intended = start + n / rate
    delay = intended - time.time()
    if delay > 0:
        stop.wait(delay)
        if stop.is_set():
            break
    pool.submit(one, n, intended)
    n += 1
pool.shutdown(wait=True)
for intended, done, status, text in sorted(results):
    print(f"{intended:.6f} {done:.6f} {status} {text}")
