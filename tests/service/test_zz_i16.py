import time
from tests.service.test_page_browser import stack, page, browser, inputs, compute, weights, open_page  # noqa

def test_dbg_only(stack, page, inputs):
    url, _ = stack(worker=False, live=True)
    log = []
    page.on("console", lambda m: log.append(("console", m.text)))
    def ws(w):
        log.append(("ws", w.url, time.time()))
        w.on("framesent", lambda p: log.append(("sent", p if isinstance(p, str) else len(p), time.time())))
        w.on("framereceived", lambda p: log.append(("recv", p[:200] if isinstance(p, str) else len(p), time.time())))
        w.on("close", lambda _: log.append(("close", time.time())))
    page.on("websocket", ws)
    open_page(page, url, "live")
    page.set_input_files("#live-source", str(inputs[0]))
    page.click("#live-start")
    try:
        page.wait_for_timeout(45000)
    finally:
        for l in log: print(l)
        print(page.evaluate("() => [document.querySelector('#live-camera').readyState, document.querySelector('#live-status').innerText, document.querySelector('#live-error').innerText]"))
