// The reference for bench/speech.sh: whisper.cpp's own library driven the way its whisper-cli
// drives it (greedy, one whisper_full call), built from the sources whisper-rs-sys vendors (which
// ship no examples/, so no upstream whisper-cli). Reads 16 kHz 16-bit WAV only.
// usage: whisper-ref -m model.bin -f audio.wav [-t N] [-l en]
#include "whisper.h"
#include <cstdio>
#include <cstring>
#include <cstdint>
#include <string>
#include <vector>
static bool read_wav(const char *path, std::vector<float> &out) {
    FILE *f = fopen(path, "rb"); if (!f) return false;
    std::vector<uint8_t> b; uint8_t buf[65536]; size_t n;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0) b.insert(b.end(), buf, buf + n);
    fclose(f);
    if (b.size() < 12 || memcmp(b.data(), "RIFF", 4) || memcmp(b.data() + 8, "WAVE", 4)) return false;
    size_t p = 12; int ch = 1, bits = 16, rate = 0;
    while (p + 8 <= b.size()) {
        uint32_t sz; memcpy(&sz, &b[p + 4], 4);
        if (!memcmp(&b[p], "fmt ", 4)) { uint16_t c, bb; uint32_t r; memcpy(&c, &b[p+10], 2); memcpy(&r, &b[p+12], 4); memcpy(&bb, &b[p+22], 2); ch = c; rate = r; bits = bb; }
        else if (!memcmp(&b[p], "data", 4)) {
            if (bits != 16 || rate != 16000) { fprintf(stderr, "need 16 kHz s16 wav\n"); return false; }
            size_t frames = std::min<size_t>(sz, b.size() - p - 8) / (2 * ch);
            const int16_t *s = (const int16_t *)&b[p + 8];
            for (size_t i = 0; i < frames; i++) { float acc = 0; for (int c = 0; c < ch; c++) acc += s[i*ch+c]; out.push_back(acc / ch / 32768.0f); }
            return true;
        }
        p += 8 + sz + (sz & 1);
    }
    return false;
}
int main(int argc, char **argv) {
    const char *model = nullptr, *wav = nullptr, *lang = "en"; int threads = 2;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "-m")) model = argv[i+1];
        else if (!strcmp(argv[i], "-f")) wav = argv[i+1];
        else if (!strcmp(argv[i], "-t")) threads = atoi(argv[i+1]);
        else if (!strcmp(argv[i], "-l")) lang = argv[i+1];
    }
    if (!model || !wav) { fprintf(stderr, "usage: %s -m model -f wav [-t n] [-l lang]\n", argv[0]); return 2; }
    std::vector<float> pcm; if (!read_wav(wav, pcm)) { fprintf(stderr, "bad wav %s\n", wav); return 3; }
    whisper_context_params cp = whisper_context_default_params(); cp.use_gpu = false;
    whisper_context *ctx = whisper_init_from_file_with_params(model, cp);
    if (!ctx) { fprintf(stderr, "failed to load model\n"); return 4; }
    whisper_full_params wp = whisper_full_default_params(WHISPER_SAMPLING_GREEDY);
    wp.n_threads = threads; wp.language = lang; wp.print_progress = false; wp.print_realtime = false;
    wp.print_timestamps = false; wp.print_special = false;
    if (whisper_full(ctx, wp, pcm.data(), (int)pcm.size()) != 0) { fprintf(stderr, "whisper_full failed\n"); return 5; }
    std::string text;
    for (int i = 0; i < whisper_full_n_segments(ctx); i++) text += whisper_full_get_segment_text(ctx, i);
    printf("%s\n", text.c_str());
    whisper_free(ctx);
    return 0;
}
