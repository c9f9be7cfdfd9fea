"""A tiny HTTP client for the Flower tests (the standard library's urllib).

    py_http.py GET <url>
    py_http.py POST <url> [<form fields as JSON>]

Prints the status code on the first line and the body after it; a refused
connection prints 0 and the error."""

import json
import sys
import urllib.error
import urllib.parse
import urllib.request

method, url = sys.argv[1], sys.argv[2]
data = None
if method == "POST":
    fields = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
    data = urllib.parse.urlencode(fields).encode()
request = urllib.request.Request(url, data=data, method=method)
try:
    with urllib.request.urlopen(request, timeout=10) as response:
        print(response.status)
        print(response.read().decode())
except urllib.error.HTTPError as error:
    print(error.code)
    print(error.read().decode())
except OSError as error:
    print(0)
    print(error)
