#!/usr/bin/env bash
# `kvfuse make-model` end to end through the CLI: a small model in f32 and in bf16 is written,
# described by `info`, and run by `run` (every method, text and pre-tokenized input) and
# `generate`; a Q4_K_M mix loads, runs and scores as its dequantized path does; an interrupted write leaves neither a partial model nor a temporary file.
set -u
kvfuse=$1
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
failures=0
check() {  # description, command...
    local what=$1; shift
    local out
    if out=$("$@" 2>&1); then
        echo "ok: $what"
    else
        echo "FAIL: $what (status $?): $out"; failures=$((failures + 1))
    fi
    last_output=$out
}
expect_in_output() {  # description, expected text
    if [[ "$last_output" == *"$2"* ]]; then echo "ok: $1"; else echo "FAIL: $1: output lacks '$2'"; failures=$((failures + 1)); fi
}
shape=(--dim 64 --layers 2 --heads 4 --kv-heads 2 --hidden 160 --vocab 512 --context 2048)
echo "the cat sat on the mat and the dog ran away from the big red house" > "$scratch/c1.txt"
echo "a bird flew over the tall green tree in the quiet morning light" > "$scratch/c2.txt"
echo "3,17,99,250,400,511,42,7" > "$scratch/ids.txt"
for dtype in f32 bf16; do
    model="$scratch/$dtype.gguf"
    check "$dtype: make-model" "$kvfuse" make-model --out "$model" "${shape[@]}" --dtype "$dtype" --seed 3
    expect_in_output "$dtype: make-model reports the shape" "2 layers, dim 64, 4 heads (2 KV, head dim 16)"
    check "$dtype: info" "$kvfuse" info --model "$model"
    expect_in_output "$dtype: info reads the shape" "llama: 2 layers, dim 64, 4 heads (2 KV, head dim 16), ffn 160, vocab 512, context 2048"
    if [[ $dtype == bf16 ]]; then want="BF16 x"; else want="F32 x"; fi
    expect_in_output "$dtype: tensor type" "$want"
    check "$dtype: run, every method" "$kvfuse" run --model "$model" --chunk "$scratch/c1.txt" --chunk "$scratch/c2.txt" \
        --question "what did the dog do" --method all --repeat 1 -n 4 --no-store
    expect_in_output "$dtype: run reports every method" "a3-layers   answer:"
    if [[ "$last_output" == *nan* || "$last_output" == *inf* ]]; then
        echo "FAIL: $dtype: non-finite figure in the run output"; failures=$((failures + 1))
    fi
    check "$dtype: run, pre-tokenized" "$kvfuse" run --model "$model" --pretokenized --chunk "$scratch/ids.txt" \
        --question "5 6 7" --method a3 --repeat 1 -n 2 --no-store
    check "$dtype: generate" "$kvfuse" generate --model "$model" -p "once upon a time" -n 4
done

# llama.cpp's Q4_K_M mix (Q6_K for output and for attn_v / ffn_down of layers 0, 3, 6, 7 of 8):
# it loads (Q4_K packed in its two-level form), runs, and its perplexity with int8 activations
# stays within 0.5 % (perplexity_llamacpp's tolerance) of the dequantize-to-f32 path's.
model="$scratch/q4_k_m.gguf"
check "q4_k_m: make-model" "$kvfuse" make-model --out "$model" --dim 256 --layers 8 --heads 4 --kv-heads 2 --hidden 512 \
    --vocab 512 --context 2048 --dtype q4_k_m --seed 3
check "q4_k_m: info" "$kvfuse" info --model "$model"
expect_in_output "q4_k_m: tensor types" "F32 x17 Q4_K x49 Q6_K x9"
check "q4_k_m: run" "$kvfuse" run --model "$model" --chunk "$scratch/c1.txt" --chunk "$scratch/c2.txt" \
    --question "what did the dog do" --method a3 --repeat 1 -n 2 --no-store
head -c 20000 "$(dirname "$0")/../driver/data/tinystories_val.txt" > "$scratch/text.txt"
ppl() { "$kvfuse" perplexity --model "$model" --file "$scratch/text.txt" --ctx 128 --max-windows 4 2>/dev/null | sed -n 's/^perplexity \([0-9.]*\) .*/\1/p'; }
quantized=$(ppl)
dequantized=$(KVFUSE_DEQUANTIZED_GEMM=1 ppl)
if [[ -n "$quantized" && -n "$dequantized" ]] &&
    awk -v q="$quantized" -v d="$dequantized" 'BEGIN { r = q / d - 1; exit !(r < 0.005 && r > -0.005) }'; then
    echo "ok: q4_k_m: perplexity $quantized (int8 activations) vs $dequantized (dequantized)"
else
    echo "FAIL: q4_k_m: perplexity '$quantized' (int8 activations) vs '$dequantized' (dequantized)"; failures=$((failures + 1))
fi

# The other architectures and shapes: info reads what make-model wrote, run runs it.
for variant in "qwen2:--arch qwen2" "qwen3:--arch qwen3 --head-dim 32" "llama:--rope-freqs --head-dim 24"; do
    arch=${variant%%:*}; read -r -a extra <<< "${variant#*:}"
    model="$scratch/$arch-variant.gguf"
    check "$variant: make-model" "$kvfuse" make-model --out "$model" "${shape[@]}" "${extra[@]}" --seed 4
    check "$variant: info" "$kvfuse" info --model "$model"
    expect_in_output "$variant: info names the architecture" "$arch: 2 layers, dim 64, 4 heads"
    check "$variant: run" "$kvfuse" run --model "$model" --chunk "$scratch/c1.txt" --question "what did the dog do" \
        --method a3 --repeat 1 -n 2 --no-store
done
expect_in_output "llama with --head-dim 24 runs heads of 24" "head dim 24"

# --chat end to end: each family's prompt is BOS, the user header, the chunks and question as
# they sit in the text, then the end of the turn and the assistant header -- exactly what
# tokenizing the template applied by hand gives (special tokens parsed).
printf 'the cat sat on the mat' > "$scratch/chat1.txt"
printf ' and the dog ran away' > "$scratch/chat2.txt"
question=" what did the dog do"
declare -A before=([llama3]=$'<|start_header_id|>user<|end_header_id|>\n\n' [chatml]=$'<|im_start|>user\n'
                   [mistral]='[INST] ' [phi3]=$'<|user|>\n' [gemma]=$'<start_of_turn>user\n')
declare -A after=([llama3]=$'<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n'
                  [chatml]=$'<|im_end|>\n<|im_start|>assistant\n' [mistral]=' [/INST]'
                  [phi3]=$'<|end|>\n<|assistant|>\n' [gemma]=$'<end_of_turn>\n<start_of_turn>model\n')
for family in llama3 chatml mistral phi3 gemma; do
    model="$scratch/chat-$family.gguf"
    check "$family: make-model --chat-template" "$kvfuse" make-model --out "$model" "${shape[@]}" --chat-template "$family"
    check "$family: tokenize the template applied by hand" "$kvfuse" tokenize --model "$model" \
        "${before[$family]}$(cat "$scratch/chat1.txt")$(cat "$scratch/chat2.txt")$question${after[$family]}"
    by_hand=$last_output
    check "$family: run --chat --verbose-prompt" "$kvfuse" run --model "$model" --chat --verbose-prompt \
        --chunk "$scratch/chat1.txt" --chunk "$scratch/chat2.txt" --question "$question" --method a3 --repeat 1 -n 2 --no-store
    prompt=$(grep '^prompt tokens: ' <<< "$last_output")
    if [[ "prompt tokens: $by_hand" == "$prompt" ]]; then
        echo "ok: $family: --chat prompt equals the template applied by hand"
    else
        echo "FAIL: $family: --chat prompt '$prompt' differs from the template applied by hand '$by_hand'"
        failures=$((failures + 1))
    fi
    # The markers are there as single control tokens (ids 508-511), not spelled out in bytes.
    if [[ "$prompt" != *"51"[01]* ]]; then echo "FAIL: $family: no marker token in '$prompt'"; failures=$((failures + 1)); fi
done

# Interrupted while writing a 100 MB model: afterwards the name holds either nothing or a
# complete model, and no temporary file is left either way.
timeout -s INT 0.3 "$kvfuse" make-model --out "$scratch/big.gguf" --dim 512 --layers 8 --hidden 1536 --vocab 8000 >/dev/null 2>&1
if ls "$scratch" | grep -q '\.tmp\.'; then
    echo "FAIL: an interrupted make-model left a temporary file: $(ls "$scratch")"; failures=$((failures + 1))
elif [[ -e "$scratch/big.gguf" ]] && ! "$kvfuse" info --model "$scratch/big.gguf" >/dev/null 2>&1; then
    echo "FAIL: an interrupted make-model left an unreadable model"; failures=$((failures + 1))
else
    echo "ok: interrupted make-model left no partial file"
fi
echo "$failures failed"
[[ $failures -eq 0 ]]
