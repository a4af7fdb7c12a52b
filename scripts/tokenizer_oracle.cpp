// llama.cpp's tokenizer as an oracle for llamatorch's (scripts/tokenizer_fuzz.py drives it).
// Build against a llama.cpp checkout (static libs: cmake -DBUILD_SHARED_LIBS=OFF ..., make llama), e.g.
//   g++ -O2 -static -std=c++17 tokenizer_oracle.cpp -I$LC/include -I$LC/ggml/include \
//       $B/src/libllama.a $B/ggml/src/libggml.a $B/ggml/src/libggml-cpu.a $B/ggml/src/libggml-base.a -lpthread
// Usage: tokenizer_oracle MODEL.gguf < records, a record being "A P\0text\0" (A = add_special, P = parse_special,
// 0/1).  Per record it prints: ids (space separated) \t hex(detokenize, special=false) \t hex(special=true) \n
#include "llama.h"
#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

static void quiet(ggml_log_level, const char *, void *) {}

static std::string hex(const std::string & s) {
    static const char * h = "0123456789abcdef";
    std::string o;
    for (unsigned char c : s) { o += h[c >> 4]; o += h[c & 15]; }
    return o;
}

static std::string detok(const llama_vocab * v, const std::vector<llama_token> & ids, bool special) {
    std::string out(ids.size() * 64 + 64, '\0');
    int n = llama_detokenize(v, ids.data(), ids.size(), &out[0], out.size(), false, special);
    if (n < 0) {
        out.resize(-n);
        n = llama_detokenize(v, ids.data(), ids.size(), &out[0], out.size(), false, special);
    }
    out.resize(n);
    return out;
}

int main(int argc, char ** argv) {
    if (argc < 2) { fprintf(stderr, "usage: %s MODEL.gguf < records\n", argv[0]); return 2; }
    llama_log_set(quiet, nullptr);
    llama_backend_init();
    auto mp = llama_model_default_params();
    mp.vocab_only = true;
    llama_model * m = llama_model_load_from_file(argv[1], mp);
    if (!m) { fprintf(stderr, "load failed\n"); return 1; }
    const llama_vocab * v = llama_model_get_vocab(m);
    std::string flags, text;
    while (std::getline(std::cin, flags, '\0') && std::getline(std::cin, text, '\0')) {
        bool add = flags[0] == '1', parse = flags[2] == '1';
        std::vector<llama_token> ids(text.size() * 2 + 16);
        int n = llama_tokenize(v, text.data(), text.size(), ids.data(), ids.size(), add, parse);
        if (n < 0) {
            ids.resize(-n);
            n = llama_tokenize(v, text.data(), text.size(), ids.data(), ids.size(), add, parse);
        }
        ids.resize(n);
        for (int i = 0; i < n; i++) printf(i ? " %d" : "%d", ids[i]);
        printf("\t%s\t%s\n", hex(detok(v, ids, false)).c_str(), hex(detok(v, ids, true)).c_str());
        fflush(stdout);
    }
    llama_model_free(m);
}
