#!/usr/bin/env python3
"""Fetch a Prometheus endpoint over HTTP and print the body (the tests parse it).

usage: scrape.py http://HOST:PORT/metrics
"""

import sys
import urllib.request

with urllib.request.urlopen(sys.argv[1], timeout=10) as resp:
    sys.stdout.write(resp.read().decode())
