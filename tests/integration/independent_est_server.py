#!/usr/bin/env python3
"""A small EST server written independently of certfleet, for interoperability tests.

It signs with the openssl command line tool and deliberately differs from the
companion in the ways real EST servers differ: base64 on one long line or in
76-column CRLF lines, content type with and without the smime-type parameter, the
CA certificate included next to the issued one, and 202 + Retry-After on the first
enrollment attempt of each CSR.

usage: independent_est_server.py WORKDIR READY_FILE
WORKDIR holds ca.pem, ca.key, server.pem, server.key; the bound port is written to READY_FILE.
"""
import base64
import http.server
import os
import ssl
import subprocess
import sys
import tempfile
import threading

WORK, READY = sys.argv[1], sys.argv[2]
USER, PASSWORD = "device-7", "s3cret-pass"
seen_csrs = set()
lock = threading.Lock()


def run_openssl(*args, data=None):
    return subprocess.run(["openssl", *args], input=data, capture_output=True, check=True).stdout


def certs_only(pem_files):
    args = ["crl2pkcs7", "-nocrl", "-outform", "DER"]
    for f in pem_files:
        args += ["-certfile", f]
    return run_openssl(*args)


def sign(csr_der):
    with tempfile.TemporaryDirectory() as tmp:
        csr = os.path.join(tmp, "req.der")
        out = os.path.join(tmp, "cert.pem")
        with open(csr, "wb") as f:
            f.write(csr_der)
        run_openssl("x509", "-req", "-inform", "DER", "-in", csr, "-CA", os.path.join(WORK, "ca.pem"),
                    "-CAkey", os.path.join(WORK, "ca.key"), "-set_serial", str(int.from_bytes(os.urandom(8), "big")),
                    "-days", "30", "-out", out)
        return certs_only([out, os.path.join(WORK, "ca.pem")])


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        sys.stderr.write("independent-est: " + (fmt % args) + "\n")

    def reply(self, status, body=b"", ctype="text/plain", headers=()):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/.well-known/est/cacerts":
            # One long base64 line without a final newline.
            body = base64.b64encode(certs_only([os.path.join(WORK, "ca.pem")]))
            self.reply(200, body, "application/pkcs7-mime")
        else:
            self.reply(404, b"not here\n")

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        op = self.path.rsplit("/", 1)[-1]
        if op == "simpleenroll":
            auth = self.headers.get("Authorization", "")
            want = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
            if auth != want:
                self.reply(401, b"who are you?\n", headers=[("WWW-Authenticate", 'Basic realm="independent"')])
                return
        elif op == "simplereenroll":
            if not self.connection.getpeercert():
                self.reply(401, b"client certificate required\n")
                return
        else:
            self.reply(404, b"not here\n")
            return
        csr = base64.b64decode(body)
        with lock:
            first = csr not in seen_csrs
            seen_csrs.add(csr)
        if first:
            self.reply(202, b"come back later\n", headers=[("Retry-After", "1")])
            return
        der = sign(csr)
        text = base64.encodebytes(der).replace(b"\n", b"\r\n")  # 76 columns, CRLF
        self.reply(200, text, "application/pkcs7-mime; smime-type=certs-only",
                   headers=[("Content-Transfer-Encoding", "base64")])


def main():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(os.path.join(WORK, "server.pem"), os.path.join(WORK, "server.key"))
    ctx.load_verify_locations(os.path.join(WORK, "ca.pem"))
    ctx.verify_mode = ssl.CERT_OPTIONAL
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    with open(READY + ".tmp", "w") as f:
        f.write(f"127.0.0.1:{server.server_address[1]}\n")
    os.rename(READY + ".tmp", READY)
    server.serve_forever()


if __name__ == "__main__":
    main()
