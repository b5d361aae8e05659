"""The `liveportrait` command line: weights, options mapping, download over a loopback HTTP server."""

import functools
import http.server
import threading
from pathlib import Path

import pytest

from common.options import AnimationOptions
from engines.download import MODEL_FILES, download_bundle, file_url
from liveportrait.cli import build_parser, main, options_from_args


def test_weights_synthetic_then_check(tmp_path, capsys):
    assert main(["weights", "synthetic", str(tmp_path), "--seed", "2"]) == 0
    assert "meaningless" in capsys.readouterr().out
    assert main(["weights", "check", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "spade_generator: 182 tensors" in out
    assert "det_10g.onnx: absent" in out


def test_weights_check_reports_a_broken_bundle(tmp_path, capsys):
    main(["weights", "synthetic", str(tmp_path)])
    (tmp_path / "liveportrait/base_models/motion_extractor.pth").write_bytes(b"not a checkpoint")
    assert main(["weights", "check", str(tmp_path)]) == 1
    assert "motion_extractor.pth" in capsys.readouterr().err


def test_every_option_has_a_flag_and_defaults_are_official():
    args = build_parser().parse_args(["animate", "s.jpg", "d.mp4", "-o", "o.mp4"])
    assert options_from_args(args) == AnimationOptions()
    args = build_parser().parse_args(
        [
            "animate",
            "s.jpg",
            "d.mp4",
            "-o",
            "o.mp4",
            "--no-flag-stitching",
            "--animation-region",
            "lip",
            "--driving-multiplier",
            "1.5",
            "--output-kind",
            "crop",
            "--crf",
            "23",
        ]
    )
    options = options_from_args(args)
    assert (options.flag_stitching, options.animation_region, options.driving_multiplier) == (
        False,
        "lip",
        1.5,
    )
    assert (options.output_kind, options.crf) == ("crop", 23)


@pytest.mark.parametrize("command", [["animate", "s.jpg", "d.mp4"], ["edit", "s.jpg"]])
def test_faces_flag_on_animate_and_edit(command):
    args = build_parser().parse_args([*command, "-o", "o.mp4", "--faces", "2,0", "--min-face-size", "0.1"])
    assert (options_from_args(args).faces, options_from_args(args).min_face_size) == ((0, 2), 0.1)
    all_faces = build_parser().parse_args([*command, "-o", "o.mp4", "--faces", "all"])
    assert options_from_args(all_faces).faces == "all"


def test_out_of_range_options_are_refused(capsys):
    code = main(["animate", "s.jpg", "d.mp4", "-o", "o.mp4", "--weights", "w", "--crf", "99"])
    assert code == 2
    assert "crf" in capsys.readouterr().err


def test_download_fetches_the_official_layout_over_http(tmp_path):
    hub = tmp_path / "hub" / "KwaiVGI" / "LivePortrait" / "resolve" / "main"
    for name in MODEL_FILES:
        (hub / name).parent.mkdir(parents=True, exist_ok=True)
        (hub / name).write_bytes(name.encode())
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path / "hub"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        assert file_url("KwaiVGI/LivePortrait", MODEL_FILES[0], base).startswith(base + "/KwaiVGI/")
        written = download_bundle(tmp_path / "weights", hub=base)
        assert len(written) == len(MODEL_FILES)
        assert all((tmp_path / "weights" / n).read_bytes() == n.encode() for n in MODEL_FILES)
        assert not list((tmp_path / "weights").rglob("*.part"))
        assert download_bundle(tmp_path / "weights", hub=base) == []  # complete files are kept
    finally:
        server.shutdown()
        server.server_close()


def test_download_failure_leaves_no_checkpoint(tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    port = server.server_address[1]
    server.server_close()  # nothing listens there now
    with pytest.raises(OSError):
        download_bundle(tmp_path, hub=f"http://127.0.0.1:{port}")
    assert not any(p.suffix == ".pth" for p in Path(tmp_path).rglob("*"))


def test_gateway_command_never_imports_torch():
    """The gateway image has no torch: building the parser and `gateway --help` must not need it."""
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from liveportrait.cli import build_parser, main\n"
        "parser = build_parser()\n"
        "assert main(['engines']) == 2\n"
        "assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
        "parser.parse_args(['gateway'])\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "needs the engines extra" in result.stderr


def test_every_expression_control_has_a_flag_on_edit_and_animate():
    import shlex

    from common.expression import ExpressionControls
    from liveportrait.arguments import expression_from_args

    def parse(command: str):
        return build_parser().parse_args(shlex.split(command))

    for name in ExpressionControls.model_fields:
        for command in ("edit s.jpg -o o.png", "animate s.jpg d.mp4 -o o.mp4"):
            assert getattr(parse(f"{command} --{name.replace('_', '-')} 0.5"), name) == 0.5, name
    assert expression_from_args(parse("edit s.jpg -o o.png")) is None
    args = parse("edit s.jpg -o o.png --smile 0.8 --yaw 10 --eyeball-direction-x -5")
    assert expression_from_args(args) == ExpressionControls(smile=0.8, yaw=10, eyeball_direction_x=-5)
    args = parse("""animate s.jpg d.mp4 -o o.mp4 --wink 9 --expression '{"smile": 0.5, "wink": 3}'""")
    assert expression_from_args(args) == ExpressionControls(smile=0.5, wink=9)  # the flag wins


def test_edit_refuses_out_of_range_controls_and_flags_with_keyframes(tmp_path, capsys):
    assert main(["edit", "s.jpg", "-o", "o.png", "--smile", "2"]) == 2
    assert "smile" in capsys.readouterr().err
    keyframes = tmp_path / "k.json"
    keyframes.write_text('[{"expression": {"smile": 1}, "change": 2}]')
    with pytest.raises(SystemExit, match="exactly one of 'expression' or 'keyframes'"):
        main(["edit", "s.jpg", "-o", "o.mp4", "--keyframes", str(keyframes), "--smile", "1"])


def test_e2e_cli_edit_writes_a_still_of_the_source_size(tmp_path, capsys):
    from engines.demo import portrait
    from engines.media import read_image, write_image

    main(["weights", "synthetic", str(tmp_path / "weights")])
    source = tmp_path / "portrait.png"
    write_image(source, portrait()[:, :501])
    out = tmp_path / "edited.jpg"
    controls = ["--smile", "0.8", "--yaw", "10", "--expression", '{"wink": 5}']
    engine = ["--weights", str(tmp_path / "weights"), "--device", "cpu"]
    assert main(["edit", str(source), "-o", str(out), *controls, *engine]) == 0
    assert f"wrote {out} (1 frames, 501x512" in capsys.readouterr().out
    assert read_image(out).shape == (512, 501, 3)
