from tests.service.test_page_browser import *  # noqa
import time

def test_debug_browser(stack, page, inputs):
    url, _ = stack(live=True)
    log = []
    page.on("console", lambda m: log.append(("console", m.text)))
    def ws(w):
        log.append(("ws", w.url))
        w.on("framesent", lambda p: log.append(("sent", p if isinstance(p, str) else len(p), time.time())))
        w.on("framereceived", lambda p: log.append(("recv", p if isinstance(p, str) else len(p), time.time())))
        w.on("close", lambda _: log.append(("close",)))
    page.on("websocket", ws)
    open_page(page, url, "edit")
    page.set_input_files("#edit-source", str(inputs[0]))
    page.wait_for_function("() => document.querySelector('#edit-status').innerText.includes('preview')", timeout=60000)
    page.focus("#edit-smile"); page.keyboard.press("End")
    try:
        page.wait_for_timeout(40000)
    finally:
        for l in log: print(l)
        print(page.inner_text("#edit-status"), page.inner_text("#edit-error"))
