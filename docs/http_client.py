#!/usr/bin/env python3
"""llmq over HTTP with the standard library only: push a message (retrying with
the same id on 429/503/504), push a batch, get a message, page a history.

    python3 docs/http_client.py [--url http://127.0.0.1:8080] [--key KEY] [CONVERSATION]
"""
import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid


def uuid7():
    """A UUIDv7 (48-bit Unix ms first), so that a conversation's history, ordered by id, is in time order."""
    b = bytearray(os.urandom(16))
    b[0:6] = (time.time_ns() // 1_000_000).to_bytes(6, "big")
    b[6] = 0x70 | (b[6] & 0x0F)
    b[8] = 0x80 | (b[8] & 0x3F)
    return str(uuid.UUID(bytes=bytes(b)))


class Gateway:
    def __init__(self, url, key=None, timeout=30):
        self.url = url.rstrip("/")
        self.key = key
        self.timeout = timeout

    def request(self, method, path, body=None, content_type="application/json"):
        """(status, headers, decoded JSON or text) of one request; never raises on HTTP errors."""
        data = None
        headers = {}
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            headers["Content-Type"] = content_type
        if self.key:
            headers["Authorization"] = "Bearer " + self.key
        req = urllib.request.Request(self.url + path, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                status, hdrs, raw = resp.status, resp.headers, resp.read()
        except urllib.error.HTTPError as e:
            status, hdrs, raw = e.code, e.headers, e.read()
        text = raw.decode("utf-8", "replace")
        is_json = (hdrs.get("Content-Type") or "").startswith("application/json")
        return status, hdrs, json.loads(text) if is_json and text else text

    def push(self, conversation, user, content, priority="normal", ack="persisted", attempts=6):
        """Pushes one message; returns (status, answer). The id is chosen here, so a
        retry after 429, 503 or 504 can never store it twice."""
        msg = {"id": uuid7(), "conversation_id": conversation, "user_id": user,
               "content": content, "priority": priority}
        path = "/api/v1/messages" + ("?ack=queued" if ack == "queued" else "")
        for attempt in range(attempts):
            try:
                status, headers, answer = self.request("POST", path, msg)
            except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
                status, headers, answer = 0, {}, str(e)  # unreachable: retry as for 503
            if status in (201, 202) or status not in (0, 429, 503, 504):
                return status, answer
            wait = float(headers.get("Retry-After") or 0.2 * 2 ** attempt)
            time.sleep(min(wait, 5))
        return status, answer

    def push_batch(self, messages, ack="persisted"):
        """Up to 1,000 messages; returns the list of per-message results."""
        path = "/api/v1/messages:batch" + ("?ack=queued" if ack == "queued" else "")
        status, _, answer = self.request("POST", path, messages)
        if status != 200:
            raise RuntimeError(f"batch refused: {status} {answer}")
        return answer["results"]

    def get(self, message_id):
        return self.request("GET", "/api/v1/messages/" + urllib.parse.quote(message_id, safe=""))

    def history(self, conversation, limit=50, after=None):
        """All pages from `after` (the nil UUID: from the start), oldest first."""
        path = "/api/v1/conversations/" + urllib.parse.quote(conversation, safe="") + "/messages"
        query = {"limit": limit}
        if after:
            query["after"] = after
        while True:
            status, _, page = self.request("GET", path + "?" + urllib.parse.urlencode(query))
            if status != 200:
                raise RuntimeError(f"history failed: {status} {page}")
            yield from page["messages"]
            if page["next_after"] is None:
                return
            query["after"] = page["next_after"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8080")
    parser.add_argument("--key", help="API key, when the gateway runs with --api-keys")
    parser.add_argument("conversation", nargs="?", default="conv_http_example")
    args = parser.parse_args()
    gw = Gateway(args.url, args.key)

    status, answer = gw.push(args.conversation, "user_py", "Hello from Python 👋  你好", priority="high")
    print(f"push: {status} {answer}")
    if status != 201:
        sys.exit(1)
    results = gw.push_batch([{"conversation_id": args.conversation, "user_id": "user_py", "content": f"batch {i}"}
                             for i in range(3)])
    print("batch:", " ".join(str(r["status"]) for r in results))
    status, _, message = gw.get(answer["id"])
    print(f"get: {status} {message['content'] if status == 200 else message}")
    for m in gw.history(args.conversation, limit=2, after="00000000-0000-0000-0000-000000000000"):
        print(f"{m['created_at']} {m['id']} {m['user_id']} {m['priority']} {m['token_count']} tok: {m['content']}")
    if any(r["status"] != 201 for r in results):
        sys.exit(1)


if __name__ == "__main__":
    main()
