#!/usr/bin/env python3
"""Validates recorded operator API responses against docs/openapi.json.

usage: openapi_check.py OPENAPI_JSON RECORD...
Each RECORD file holds one response: a first line "METHOD PATH STATUS", then the body.
The response must be documented for that path template, method and status, and its body
must match the documented schema. Exits non-zero and names every mismatch.
"""
import json
import re
import sys

import jsonschema


def template_regex(path):
    return re.compile("^" + re.sub(r"\{[^}]+\}", "[^/]+", path) + "$")


def main():
    doc = json.load(open(sys.argv[1]))
    templates = [(template_regex(p), p) for p in doc["paths"]]
    failures = 0
    for record in sys.argv[2:]:
        with open(record) as f:
            head = f.readline().split()
            body = f.read()
        method, path, status = head[0].lower(), head[1].split("?")[0], head[2]
        matches = [p for rx, p in templates if rx.match(path)]
        # A literal segment wins over a parameter ("/things" over "/things/{x}").
        matches.sort(key=lambda p: p.count("{"))
        if not matches or method not in doc["paths"][matches[0]]:
            # Unknown endpoints and methods answer the documented error shape.
            if status in ("404", "405"):
                try:
                    jsonschema.validate(json.loads(body), doc["components"]["schemas"]["Error"])
                    continue
                except (jsonschema.ValidationError, json.JSONDecodeError) as e:
                    print(f"{record}: {status} error body: {str(e).splitlines()[0]}")
                    failures += 1
                    continue
            print(f"{record}: {method.upper()} {path} is not documented")
            failures += 1
            continue
        responses = doc["paths"][matches[0]][method]["responses"]
        if status not in responses:
            print(f"{record}: status {status} of {method.upper()} {matches[0]} is not documented")
            failures += 1
            continue
        content = responses[status].get("content", {})
        if "application/json" not in content:
            continue
        schema = dict(content["application/json"]["schema"])
        schema["components"] = doc["components"]
        try:
            jsonschema.validate(json.loads(body), schema)
        except (jsonschema.ValidationError, json.JSONDecodeError) as e:
            print(f"{record}: {method.upper()} {path} {status}: {str(e).splitlines()[0]}")
            failures += 1
    print(f"{len(sys.argv) - 2 - failures} responses valid, {failures} invalid")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
