"""Drives a SuperSocket FTP instance with Python's own ftplib, unmodified.

    python3 ftplib_check.py PORT USER PASSWORD SCENARIO

Scenarios: full (every command a client uses), bad-password (530), jail (every escape is
answered 550), read-only (every change is answered 550), abort (ABOR during a RETR of big.bin),
exhausted (a second PASV while the only passive port is held gets 425), rest-past-end (a REST
offset past the end of a file is answered 554, one at its end resumes). Prints one line per step;
any surprise raises, so the exit status says whether the scenario held.
"""

import ftplib
import io
import sys


def connect(port, user, password):
    ftp = ftplib.FTP()
    ftp.connect("127.0.0.1", port, timeout=10)
    ftp.login(user, password)
    return ftp


def expect_code(code, call, *args):
    try:
        answer = call(*args)
    except ftplib.all_errors as error:
        assert str(error).startswith(code), f"{call.__name__}{args}: {error}"
        print(f"refused {args}: {error}")
        return
    raise AssertionError(f"{call.__name__}{args} answered {answer!r}, expected {code}")


def full(ftp):
    assert ftp.pwd() == "/"
    listing = []
    ftp.retrlines("LIST", listing.append)
    assert any(line.startswith("-") and line.endswith(" hello.txt") for line in listing), listing
    assert "hello.txt" in ftp.nlst()
    facts = dict(ftp.mlsd())
    assert facts["hello.txt"]["type"] == "file" and facts["hello.txt"]["size"] == "6", facts
    got = io.BytesIO()
    ftp.retrbinary("RETR hello.txt", got.write)
    assert got.getvalue() == b"hello\n", got.getvalue()
    ftp.storbinary("STOR up.bin", io.BytesIO(b"a" * 70000))
    ftp.storbinary("APPE up.bin", io.BytesIO(b"b" * 30))
    assert ftp.size("up.bin") == 70030
    modified = ftp.sendcmd("MDTM up.bin")
    assert modified.startswith("213 ") and len(modified) == 18, modified
    assert ftp.mkd("made") == "/made"
    ftp.cwd("made")
    assert ftp.pwd() == "/made"
    ftp.rename("/up.bin", "moved.bin")
    assert ftp.nlst() == ["moved.bin"], ftp.nlst()
    got = io.BytesIO()
    ftp.retrbinary("RETR moved.bin", got.write, rest=69990)
    assert got.getvalue() == b"a" * 10 + b"b" * 30, got.getvalue()
    ftp.delete("moved.bin")
    ftp.cwd("..")
    ftp.rmd("made")
    assert "made" not in ftp.nlst()
    print("full: ok")


def jail(ftp):
    for path in ["..", "../..", "/..", "out", "sub/../../x"]:
        expect_code("550", ftp.cwd, path)
    for path in ["../secret.txt", "/../secret.txt", "out/secret.txt", "escape", "sub/../../secret.txt"]:
        expect_code("550", ftp.size, path)
        expect_code("550", ftp.retrbinary, "RETR " + path, print)
    for path in ["../planted.txt", "out/planted.txt", "/../planted.txt"]:
        expect_code("550", ftp.storbinary, "STOR " + path, io.BytesIO(b"planted"))
        expect_code("550", ftp.storbinary, "APPE " + path, io.BytesIO(b"planted"))
    expect_code("550", ftp.storbinary, "STOR escape", io.BytesIO(b"through a link"))
    expect_code("550", ftp.mkd, "../made")
    expect_code("550", ftp.mkd, "out/made")
    expect_code("550", ftp.delete, "../secret.txt")
    expect_code("550", ftp.delete, "out/secret.txt")
    expect_code("550", ftp.rmd, "../outside")
    expect_code("550", ftp.rename, "hello.txt", "../stolen.txt")
    expect_code("550", ftp.rename, "out/secret.txt", "stolen.txt")
    expect_code("550", ftp.retrlines, "LIST out", print)
    expect_code("550", ftp.retrlines, "LIST ../", print)
    expect_code("550", ftp.sendcmd, "MDTM ../secret.txt")
    print("jail: ok")


def read_only(ftp):
    got = io.BytesIO()
    ftp.retrbinary("RETR hello.txt", got.write)
    assert got.getvalue() == b"hello\n"
    expect_code("550", ftp.storbinary, "STOR new.txt", io.BytesIO(b"new"))
    expect_code("550", ftp.storbinary, "APPE hello.txt", io.BytesIO(b"more"))
    expect_code("550", ftp.delete, "hello.txt")
    expect_code("550", ftp.mkd, "made")
    expect_code("550", ftp.rmd, "sub")
    expect_code("550", ftp.rename, "hello.txt", "renamed.txt")
    print("read-only: ok")


def abort(ftp):
    ftp.voidcmd("TYPE I")
    data = ftp.transfercmd("RETR big.bin")
    assert data.recv(65536), "the transfer started"
    answer = ftp.abort()
    # RFC 959: a 426 for the transfer, then a 226 for the ABOR itself.
    assert answer.startswith("426"), answer
    assert ftp.getresp().startswith("226")
    data.close()
    assert ftp.voidcmd("NOOP").startswith("200")
    got = io.BytesIO()
    ftp.retrbinary("RETR hello.txt", got.write)
    assert got.getvalue() == b"hello\n"
    assert ftp.sendcmd("ABOR").startswith("225"), "nothing left to abort"
    print("abort: ok")


def rest_past_end(ftp):
    # hello.txt holds 6 bytes; nothing may be sent, received or filled in past them.
    expect_code("554", ftp.retrbinary, "RETR hello.txt", print, 8192, 7)
    expect_code("554", ftp.storbinary, "STOR hello.txt", io.BytesIO(b"more"), 8192, None, 7)
    expect_code("554", ftp.storbinary, "APPE hello.txt", io.BytesIO(b"more"), 8192, None, 7)
    expect_code("550", ftp.storbinary, "STOR absent.txt", io.BytesIO(b"more"), 8192, None, 1)
    got = io.BytesIO()
    ftp.retrbinary("RETR hello.txt", got.write)
    assert got.getvalue() == b"hello\n", got.getvalue()
    # At the end is not past it: nothing to send, or an upload that carries on.
    got = io.BytesIO()
    ftp.retrbinary("RETR hello.txt", got.write, 8192, 6)
    assert got.getvalue() == b"", got.getvalue()
    ftp.storbinary("STOR resumed.txt", io.BytesIO(b"hello\n"))
    ftp.storbinary("STOR resumed.txt", io.BytesIO(b"more\n"), 8192, None, 6)
    got = io.BytesIO()
    ftp.retrbinary("RETR resumed.txt", got.write)
    assert got.getvalue() == b"hello\nmore\n", got.getvalue()
    print("rest-past-end: ok")


def exhausted(port, user, password):
    holder = connect(port, user, password)
    assert holder.sendcmd("PASV").startswith("227")
    other = connect(port, user, password)
    expect_code("425", other.sendcmd, "PASV")
    expect_code("425", other.sendcmd, "EPSV")
    # The holder uses its port; once that transfer ends, the port is free again.
    holder.retrlines("NLST", lambda line: None)
    assert other.sendcmd("EPSV").startswith("229")
    print("exhausted: ok")


def main():
    port, user, password, scenario = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    if scenario == "bad-password":
        expect_code("530", connect, port, user, password)
        return
    if scenario == "exhausted":
        exhausted(port, user, password)
        return
    ftp = connect(port, user, password)
    scenarios = {
        "full": full,
        "jail": jail,
        "read-only": read_only,
        "abort": abort,
        "rest-past-end": rest_past_end,
    }
    scenarios[scenario](ftp)
    ftp.quit()


main()
