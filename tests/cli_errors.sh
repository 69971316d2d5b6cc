#!/usr/bin/env bash
# Bad input to the kvfuse program: a clear message on stderr and a non-zero status, never a
# crash (a signal gives status >= 128, which fails this test too).
set -u
kvfuse=$1
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
failures=0
passed=0
expect_error() {  # expected-message-part, command...
    local want=$1; shift
    local out status
    out=$("$@" 2>&1 >/dev/null); status=$?
    if [[ $status -eq 0 || $status -ge 128 ]]; then
        echo "FAIL (status $status): $*"; failures=$((failures + 1))
    elif [[ "$out" != *"$want"* ]]; then
        echo "FAIL (message '$out' lacks '$want'): $*"; failures=$((failures + 1))
    else
        echo "ok: $* -> $out"; passed=$((passed + 1))
    fi
}
: > "$scratch/empty.txt"
echo "A short chunk." > "$scratch/chunk.txt"
printf 'GGUF\x03\x00\x00\x00' > "$scratch/bad.gguf"
head -c 100000 /dev/urandom > "$scratch/random.gguf"
expect_error "cannot open" "$kvfuse" generate --model "$scratch/missing.gguf" -p hi
expect_error "truncated" "$kvfuse" generate --model "$scratch/bad.gguf" -p hi
expect_error "bad magic" "$kvfuse" info --model "$scratch/random.gguf"
expect_error "non-empty --prompt" "$kvfuse" generate -p ""
# Tokenizer and chat prompts: a missing model, a model without a chat template.
expect_error "cannot open" "$kvfuse" tokenize --model "$scratch/missing.gguf" hi
expect_error "truncated" "$kvfuse" tokenize --model "$scratch/bad.gguf" hi
expect_error "chat_template is missing" "$kvfuse" run --chat --chunk "$scratch/chunk.txt" --question q --no-store --repeat 1
expect_error "tokens" "$kvfuse" generate -p hi -n 0
expect_error "exceed the context" "$kvfuse" generate -p hi -n 5000
expect_error "cannot open" "$kvfuse" run --chunk "$scratch/nope.txt" --question "q" --no-store
expect_error "chunk is empty" "$kvfuse" run --chunk "$scratch/empty.txt" --question "q" --no-store
expect_error "--question" "$kvfuse" run --chunk "$scratch/chunk.txt" --no-store
expect_error "ratio" "$kvfuse" run --chunk "$scratch/chunk.txt" --question "q" --ratio 0 --no-store
expect_error "ratio" "$kvfuse" run --chunk "$scratch/chunk.txt" --question "q" --ratio 1.5 --no-store
expect_error "unknown method" "$kvfuse" run --chunk "$scratch/chunk.txt" --question "q" --method blend --no-store
long=$(for i in $(seq 1 800); do printf 'The little dog ran to the big red house. '; done)
echo "$long" > "$scratch/long.txt"
expect_error "context" "$kvfuse" run --chunk "$scratch/long.txt" --question "q" --no-store
expect_error "cannot open" "$kvfuse" eval --data "$scratch/none.txt" --no-store
expect_error "unknown --kind" "$kvfuse" eval --data "$scratch/chunk.txt" --kind poems --no-store
expect_error "not valid JSON" "$kvfuse" eval --data "$scratch/chunk.txt" --kind musique --no-store
expect_error "fewer tokens" "$kvfuse" perplexity --file "$scratch/chunk.txt" --ctx 100
expect_error "KVFUSE_ISA" env KVFUSE_ISA=sse9 "$kvfuse" info
echo "1 2 x 4" > "$scratch/ids_bad.txt"
echo "403 407 261 378 9999" > "$scratch/ids_range.txt"
expect_error "is not a token id" "$kvfuse" run --pretokenized --chunk "$scratch/ids_bad.txt" --question "5" --no-store
expect_error "outside the vocabulary" "$kvfuse" run --pretokenized --chunk "$scratch/ids_range.txt" --question "5" --no-store
expect_error "outside the vocabulary" "$kvfuse" generate --ids 1,2,600
# make-model: bad shapes and files are refused before anything is written. Each option is given
# once (a repeated option is a different error), with valid values for the rest.
mm() {  # the options to vary, then a valid small shape for the others
    local -A given=()
    local args=("$@") i
    for ((i = 0; i < ${#args[@]}; i++)); do [[ ${args[i]} == --* ]] && given[${args[i]}]=1; done
    local base=(--dim 64 --layers 2 --heads 4 --kv-heads 2 --hidden 64 --vocab 300 --out "$scratch/m.gguf")
    for ((i = 0; i < ${#base[@]}; i += 2)); do [[ -z ${given[${base[i]}]:-} ]] && args+=("${base[i]}" "${base[i + 1]}"); done
    "$kvfuse" make-model "${args[@]}"
}
expect_error "--out is required" "$kvfuse" make-model --dim 64
expect_error "multiple of --heads" mm --heads 3 --kv-heads 1
expect_error "multiple of --kv-heads" mm --kv-heads 3
expect_error "must be even" mm --head-dim 7
expect_error "unless --head-dim gives the head size" mm --heads 3 --kv-heads 1 --dim 64
expect_error "--arch must be llama, qwen2 or qwen3" mm --arch gemma
expect_error "--chat-template must be llama3, chatml" mm --chat-template jinja
expect_error "--dtype must be one of F32, F16" mm --dtype f8
expect_error "--dtype Q4_K stores rows in blocks of 256 values" mm --dtype q4_k
expect_error "--vocab must be in" mm --vocab 100
expect_error "--layers must be in" mm --layers 1
expect_error "--dim must be in" mm --dim 0
expect_error "exists" mm --out "$scratch/chunk.txt"
expect_error "cannot create" mm --out "$scratch/no-such-dir/m.gguf"
expect_error "is a directory" mm --out "$scratch"
if [[ -e "$scratch/m.gguf" ]]; then echo "FAIL: a refused make-model wrote a file"; failures=$((failures + 1)); fi
# Pre-tokenized input runs a request end to end.
echo "403,407,261,378" > "$scratch/ids_ok.txt"
if out=$("$kvfuse" run --pretokenized --chunk "$scratch/ids_ok.txt" --question "261 378" --method a3 --no-store --repeat 1 2>&1); then
    echo "ok: pre-tokenized run"; passed=$((passed + 1))
else
    echo "FAIL: pre-tokenized run: $out"; failures=$((failures + 1))
fi
# Tuning: bad arguments, then a quick tune whose profile the next process loads, and a
# corrupt profile that is reported and ignored (not an error: the defaults stay).
expect_error "missing.gguf" "$kvfuse" tune --quick --model "$scratch/missing.gguf"
echo "a file" > "$scratch/not_a_dir"
expect_error "cannot create" "$kvfuse" tune --quick --out "$scratch/not_a_dir/profile.json"
# On the bundled model's shapes (head dim 8): the default Llama shapes take minutes under the
# sanitizers, and what is checked here is the profile's round trip, not the measurements.
bundled="$(dirname "$0")/../driver/models/stories260K.gguf"
if "$kvfuse" tune --quick --model "$bundled" --out "$scratch/profile.json" >/dev/null 2>&1 &&
    KVFUSE_PROFILE="$scratch/profile.json" "$kvfuse" info | grep -q "tuning: profile $scratch/profile.json"; then
    echo "ok: tune writes a profile that loads"; passed=$((passed + 1))
else
    echo "FAIL: tune --quick then info with KVFUSE_PROFILE"; failures=$((failures + 1))
fi
echo '{"format": "kvfuse-tuning-profile"' > "$scratch/corrupt.json"
if KVFUSE_PROFILE="$scratch/corrupt.json" "$kvfuse" info | grep -q "ignored profile"; then
    echo "ok: a corrupt profile is reported and ignored"; passed=$((passed + 1))
else
    echo "FAIL: corrupt profile not reported"; failures=$((failures + 1))
fi
expect_error "cannot open" "$kvfuse" score-accuracy --data "$scratch/none.txt"
expect_error "no request" "$kvfuse" score-accuracy --data "$scratch/empty.txt"
expect_error "--fraction" "$kvfuse" score-accuracy --fraction 0 --count 1 --no-synthetic
if "$kvfuse" score-accuracy --count 2 --synthetic-tokens 300 --synthetic-draws 1 --json "$scratch/accuracy.json" >/dev/null 2>&1 &&
    grep -q '"model_keys"' "$scratch/accuracy.json" && grep -q 'outlier channels x20' "$scratch/accuracy.json"; then
    echo "ok: score-accuracy writes its rows"; passed=$((passed + 1))
else
    echo "FAIL: score-accuracy --count 2 --json"; failures=$((failures + 1))
fi
expect_error "does not exist" "$kvfuse" info --cores 4096
expect_error "listed twice" "$kvfuse" info --cores 0,0
# Files that are not regular files: refused at once (a FIFO would block open() forever, so each
# command runs under `timeout`, whose status 124 with no message fails the check).
mkfifo "$scratch/fifo"
mkdir "$scratch/dir"
expect_error "not a regular file" timeout 60 "$kvfuse" info --model "$scratch/fifo"
expect_error "not a regular file" timeout 60 "$kvfuse" generate --model "$scratch/fifo" -p hi
expect_error "not a regular file" timeout 60 "$kvfuse" run --chunk "$scratch/fifo" --question q --no-store
expect_error "not a regular file" timeout 60 "$kvfuse" eval --data "$scratch/fifo" --no-store
expect_error "not a regular file" timeout 60 "$kvfuse" eval --data "$scratch/fifo" --kind musique --no-store
expect_error "not a regular file" timeout 60 "$kvfuse" perplexity --file "$scratch/fifo"
expect_error "not a regular file" timeout 60 "$kvfuse" score-accuracy --data "$scratch/fifo"
expect_error "is a directory" "$kvfuse" perplexity --file "$scratch/dir"
expect_error "not a regular file" "$kvfuse" info --model "$scratch/dir"
# Small acceptances: each of these used to run (and print something) instead of failing.
expect_error "--ids holds no token id" "$kvfuse" generate --ids ''
expect_error "--ids holds no token id" "$kvfuse" generate --ids ' , '
expect_error "is not a token id" "$kvfuse" generate --ids 1,,x
expect_error "excludes" "$kvfuse" generate --ids 1,2 -p hi
expect_error "not in range" "$kvfuse" perplexity --file "$scratch/chunk.txt" --max-windows -1
expect_error "not in range" "$kvfuse" run --chunk "$scratch/chunk.txt" --question q --no-store --seed -1
echo '[]' > "$scratch/empty.json"
expect_error "the list of items is empty" "$kvfuse" eval --data "$scratch/empty.json" --kind musique --no-store
echo '[{"question": "who?", "ctxs": [{"title": "t", "text": "x"}]}]' > "$scratch/qa.json"
expect_error "looks like JSON" "$kvfuse" eval --data "$scratch/qa.json" --no-store
expect_error "looks like JSON" "$kvfuse" eval --data "$scratch/qa.json" --kind mixed --no-store
expect_error "looks like JSON" "$kvfuse" score-accuracy --data "$scratch/qa.json"
echo '[{"question": " ", "ctxs": [{"text": "x"}]}]' > "$scratch/qa_noq.json"
expect_error "empty \"question\"" "$kvfuse" eval --data "$scratch/qa_noq.json" --kind musique --no-store
echo '[{"question": "who?", "ctxs": [{"text": ""}]}]' > "$scratch/qa_notext.json"
expect_error "empty \"text\"" "$kvfuse" eval --data "$scratch/qa_notext.json" --kind musique --no-store
echo '[{"question": "who?", "ctxs": [{"text": "x"}], "answers": ["a", 3]}]' > "$scratch/qa_answer.json"
expect_error "every answer must be a string" "$kvfuse" eval --data "$scratch/qa_answer.json" --kind musique --no-store
# NaN weights: every command that answers fails instead of printing an empty answer (greedy
# decoding of NaN logits picks token 0). The last 4 KiB of the file are the last layer's weights.
nan_model="$scratch/nan.gguf"
if "$kvfuse" make-model --out "$nan_model" --dim 64 --layers 2 --heads 4 --kv-heads 2 --hidden 64 --vocab 300 \
    --context 512 >/dev/null 2>&1; then
    size=$(stat -c %s "$nan_model")
    head -c 4096 /dev/zero | tr '\0' '\377' | dd of="$nan_model" bs=4096 seek=$((size / 4096 - 1)) conv=notrunc status=none
    data="$(dirname "$0")/../driver/data/tinystories_val.txt"
    expect_error "non-finite logits" "$kvfuse" generate --model "$nan_model" -p "the cat sat"
    expect_error "non-finite logits" "$kvfuse" run --model "$nan_model" --chunk "$scratch/chunk.txt" --question q --no-store --repeat 1
    expect_error "non-finite logits" "$kvfuse" perplexity --model "$nan_model" --file "$data" --ctx 16 --max-windows 1
    expect_error "non-finite logits" "$kvfuse" eval --model "$nan_model" --data "$data" --count 1 --no-store
else
    echo "FAIL: make-model for the NaN model"; failures=$((failures + 1))
fi
echo "$passed passed, $failures failed"
[[ $failures -eq 0 ]]
