"""The app's response head as the client gets it: ``rewrite_response_head``, a pure function."""

from __future__ import annotations

import pytest

from enclave_core.http.upstream import ResponseHead, rewrite_response_head


def rewrite(
    status: int,
    headers: list[tuple[bytes, bytes]],
    *,
    version: str = "1.1",
    head_request: bool = False,
    close: bool = False,
) -> ResponseHead:
    return rewrite_response_head(
        status, headers, version=version, head_request=head_request, close=close
    )


def test_a_sized_answer_keeps_its_length_and_waits_for_its_body() -> None:
    head = rewrite(200, [(b"Content-Type", b"text/plain"), (b"Content-Length", b"5")])
    assert head.data == b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\n"
    assert head == (head.data, False, False, False, True)


def test_hop_by_hop_headers_never_reach_the_client() -> None:
    headers = [
        (b"Connection", b"keep-alive, X-Secret"),
        (b"Keep-Alive", b"timeout=5"),
        (b"Proxy-Connection", b"keep-alive"),
        (b"TE", b"trailers"),
        (b"Trailer", b"X-Checksum"),
        (b"Upgrade", b"h2c"),
        (b"Content-Length", b"0"),
        (b"X-App", b"kept"),
    ]
    data = rewrite(200, headers).data
    assert data == b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-App: kept\r\n\r\n"


def test_a_chunked_answer_stays_chunked() -> None:
    head = rewrite(200, [(b"Transfer-Encoding", b"Chunked")])
    assert head.data == b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    assert (head.chunk_out, head.until_close, head.hold) == (True, False, False)


def test_an_unsized_answer_is_chunked_for_http11_and_closes_for_http10() -> None:
    head11 = rewrite(200, [])
    assert head11.data == b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    assert (head11.chunk_out, head11.until_close, head11.close) == (True, True, False)
    head10 = rewrite(200, [], version="1.0")
    assert head10.data == b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n"
    assert (head10.chunk_out, head10.until_close, head10.close) == (False, True, True)


def test_http10_keep_alive_is_said_explicitly() -> None:
    head = rewrite(200, [(b"Content-Length", b"2")], version="1.0")
    assert head.data.endswith(b"Content-Length: 2\r\nConnection: keep-alive\r\n\r\n")
    assert head.close is False


def test_a_client_that_must_close_is_told_so() -> None:
    head = rewrite(200, [(b"Content-Length", b"2")], close=True)
    assert head.data.endswith(b"Connection: close\r\n\r\n")
    assert head.close is True


@pytest.mark.parametrize("status", [204, 304])
def test_bodyless_statuses_get_no_framing(status: int) -> None:
    head = rewrite(status, [])
    assert b"Transfer-Encoding" not in head.data
    assert (head.chunk_out, head.until_close, head.hold) == (False, False, False)


def test_a_head_request_gets_the_headers_and_no_body_framing() -> None:
    head = rewrite(200, [(b"Content-Length", b"1000")], head_request=True)
    assert head.data == b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"
    assert (head.chunk_out, head.until_close, head.hold) == (False, False, False)
    chunked = rewrite(200, [(b"Transfer-Encoding", b"chunked")], head_request=True)
    assert chunked.chunk_out is False


def test_a_switch_of_protocols_keeps_its_upgrade_and_never_closes() -> None:
    head = rewrite(101, [(b"Upgrade", b"websocket"), (b"Connection", b"Upgrade")], close=True)
    assert head.data == (
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    )
    assert head.close is False


def test_an_unknown_status_still_gets_a_status_line() -> None:
    assert rewrite(299, [(b"Content-Length", b"0")]).data.startswith(b"HTTP/1.1 299 Unknown\r\n")
