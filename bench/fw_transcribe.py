"""Transcribes corpus files with faster-whisper on an original CTranslate2 Whisper model (greedy,
no VAD): the reference the converted ggml model's WER is held against (bench/speech.sh).

usage: python faster_whisper.py MODEL_DIR LANGUAGE OUT.tsv FILE...
"""
import os
import sys

from faster_whisper import WhisperModel

model_dir, language, out_path, *files = sys.argv[1:]
model = WhisperModel(model_dir, device="cpu", compute_type="float32", cpu_threads=2)
with open(out_path, "w") as out:
    for path in files:
        segments, _ = model.transcribe(path, beam_size=1, best_of=1, temperature=0.0,
                                       language=language, vad_filter=False)
        text = " ".join(s.text.strip() for s in segments).replace("\t", " ").replace("\n", " ")
        out.write(f"{os.path.basename(path)}\t{text}\n")
