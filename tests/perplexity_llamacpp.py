#!/usr/bin/env python3
"""`kvfuse perplexity --protocol llama.cpp` against llama-perplexity's own figures.

tests/data/quants/perplexity.json holds `llama-perplexity -c 128 -b 128` on the first 100,000
bytes of driver/data/tinystories_val.txt for the bundled model (its ff192 F32 copy: the same
model exactly) and for the files llama.cpp's tool quantized from it. kvfuse runs each file under
the same protocol and must land within 0.5 % (llama.cpp multiplies with int8-quantized
activations, kvfuse in f32, so the quantized files differ by a little).

Usage: perplexity_llamacpp.py KVFUSE_CLI SOURCE_DIR [--smoke]

--smoke (the sanitizer build): each file through two windows only, checked to run and give a
finite perplexity; the figures are compared in every plain build. The whole text under the
sanitizers takes over 15 minutes, most of that lane's test time, for no memory check the first
windows do not already make (every tensor of every file is used by each window).
"""
import json
import math
import os
import re
import subprocess
import sys
import tempfile

TOLERANCE = 0.005


def main(cli, source, smoke=False):
    data = os.path.join(source, "tests", "data", "quants")
    expected = json.load(open(os.path.join(data, "perplexity.json")))
    text = open(os.path.join(source, "driver", "data", "tinystories_val.txt"), "rb").read()[:100000]
    failures = 0
    with tempfile.NamedTemporaryFile(suffix=".txt") as cut:
        cut.write(text)
        cut.flush()
        for name, figures in sorted(expected.items()):
            # The F32 reference is the bundled model itself (zero padding changes nothing).
            model = (os.path.join(source, "driver", "models", "stories260K.gguf") if "F32" in name
                     else os.path.join(data, name))
            command = [cli, "perplexity", "--model", model, "--file", cut.name, "--ctx", "128", "--protocol", "llama.cpp"]
            if smoke:
                command += ["--max-windows", "2"]
            run = subprocess.run(command, capture_output=True, text=True, timeout=600)
            match = re.search(r"perplexity ([0-9.]+) over (\d+) predicted tokens", run.stdout)
            if run.returncode != 0 or not match:
                print(f"FAIL {name}: status {run.returncode}\n{run.stdout}{run.stderr}")
                failures += 1
                continue
            ppl = float(match.group(1))
            if smoke:
                ok = math.isfinite(ppl) and ppl > 1.0
                failures += not ok
                print(f"{'ok  ' if ok else 'FAIL'} {name}: kvfuse {ppl:.4f} over {match.group(2)} tokens (smoke run)")
                continue
            deviation = ppl / figures["ppl"] - 1.0
            ok = abs(deviation) <= TOLERANCE
            failures += not ok
            print(f"{'ok  ' if ok else 'FAIL'} {name}: kvfuse {ppl:.4f}, llama.cpp {figures['ppl']:.4f} "
                  f"({100 * deviation:+.2f} %), {match.group(2)} tokens scored")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], smoke="--smoke" in sys.argv[3:]))
