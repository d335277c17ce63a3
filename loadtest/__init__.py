"""Load tests for the AFRL service: locust users, a headless runner and SLO checks.

* `loadtest/locustfile.py`: users for `/score` (1 to 64 documents per request), `/rerank` and streaming
  `/explain` (time to the score event and time to the end are separate entries).
* `loadtest/payloads.py`: request bodies from the TREC DL data when present, else a built-in sample.
* `loadtest/slo.py`: SLOs from a YAML file (error rate, p95 and p99 per endpoint) checked on locust's stats CSV.
* `python -m loadtest --host URL -u USERS -t DURATION`: runs locust headless, writes CSV and HTML reports,
  checks the SLOs and exits non-zero on a miss.
"""
