"""A webhook receiver for the compose demo: prints every POST it gets, answers 200."""

import json
from http.server import BaseHTTPRequestHandler, HTTPServer


class Receiver(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        try:
            shown = json.dumps(json.loads(body), indent=2)
        except ValueError:
            shown = body.decode("utf-8", "replace")
        auth = "yes" if self.headers.get("authorization") else "no"
        print(f"POST {self.path} (authorization header: {auth})\n{shown}", flush=True)
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


HTTPServer(("0.0.0.0", 8080), Receiver).serve_forever()
