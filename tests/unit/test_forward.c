/* test_forward.c — the reference forward pass reproduces a real model.
 *
 * Greedy decoding of Karpathy's stories260K from BOS must give the token ids
 * in examples/PROVENANCE.md, which were computed outside this project (the
 * llama2.c run of the original checkpoint).  Both the F32 original and the
 * BF16 copy must produce them.  Then a few properties that need no outside
 * reference: logits at a position do not depend on later tokens (causality),
 * the thread count does not change the result, and bad ids are refused. */
#include "flashify/checkpoint.h"
#include "flashify/forward.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"

/* From examples/PROVENANCE.md: "Greedy token ids, BOS first". */
static const int32_t expected[] = {1, 403, 407, 261, 378, 432, 383, 286, 261, 376, 298, 315, 421};
#define N_EXPECTED (sizeof expected / sizeof expected[0])

static long argmax(const float *v, long n)
{
    long best = 0;
    for (long i = 1; i < n; i++)
        if (v[i] > v[best])
            best = i;
    return best;
}

static void greedy(const char *models, const char *name)
{
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/%s", models, name);
    checkpoint ck;
    fl_error err = {0};
    fl_status s = ckpt_open(dir, &ck, &err);
    CHECK(s == FL_OK, "ckpt_open %s: %s", dir, err.msg);
    if (s != FL_OK)
        return;
    fwd_model *m = NULL;
    s = fwd_open(&ck, 2, &m, &err);
    CHECK(s == FL_OK, "fwd_open %s: %s", dir, err.msg);
    if (s != FL_OK) {
        ckpt_close(&ck);
        return;
    }
    long V = fwd_vocab(m);
    CHECK(V == 512, "%s: vocab %ld", name, V);
    CHECK(fwd_bos(m) == 1, "%s: bos %ld", name, fwd_bos(m));

    int32_t toks[N_EXPECTED];
    float *logits = malloc(N_EXPECTED * (size_t)V * sizeof *logits);
    toks[0] = (int32_t)fwd_bos(m);
    size_t n = 1;
    /* No KV cache: each step reruns the prefix, which also exercises T > 1. */
    for (; n < N_EXPECTED; n++) {
        s = fwd_logits(m, toks, n, logits, &err);
        CHECK(s == FL_OK, "%s: fwd_logits: %s", name, err.msg);
        if (s != FL_OK)
            break;
        toks[n] = (int32_t)argmax(logits + (n - 1) * V, V);
    }
    int same = n == N_EXPECTED;
    for (size_t i = 0; same && i < N_EXPECTED; i++)
        same = toks[i] == expected[i];
    if (!same) {
        fprintf(stderr, "%s: got", name);
        for (size_t i = 0; i < n; i++)
            fprintf(stderr, " %d", toks[i]);
        fputc('\n', stderr);
    }
    CHECK(same, "%s: greedy ids differ from PROVENANCE.md", name);

    /* Causality and thread independence: the full 13-token pass with one
     * thread gives, at position 4, what the 5-token pass gave above. */
    float *full = malloc(N_EXPECTED * (size_t)V * sizeof *full);
    float *prefix = malloc(5 * (size_t)V * sizeof *prefix);
    fwd_model *m1 = NULL;
    s = fwd_open(&ck, 1, &m1, &err);
    CHECK(s == FL_OK, "fwd_open threads=1: %s", err.msg);
    if (s == FL_OK && full && prefix) {
        CHECK(fwd_logits(m1, expected, N_EXPECTED, full, &err) == FL_OK, "%s", err.msg);
        CHECK(fwd_logits(m, expected, 5, prefix, &err) == FL_OK, "%s", err.msg);
        double maxd = 0;
        for (long i = 0; i < 5 * V; i++)
            maxd = fmax(maxd, fabs((double)full[i] - prefix[i]));
        CHECK(maxd < 1e-4, "%s: logits of a prefix depend on later tokens or threads (%g)", name, maxd);
        /* The logits are not degenerate: a real spread over the vocabulary. */
        float lo = full[0], hi = full[0];
        for (long i = 0; i < V; i++) {
            lo = fminf(lo, full[i]);
            hi = fmaxf(hi, full[i]);
        }
        CHECK(hi - lo > 5, "%s: logit spread %g", name, (double)(hi - lo));
        int32_t bad[2] = {1, 512};
        CHECK(fwd_logits(m1, bad, 2, full, &err) == FL_EINPUT, "id 512 accepted");
        CHECK(strstr(err.msg, "512") != NULL, "error names the id: %s", err.msg);
    }
    fwd_close(m1);
    free(full);
    free(prefix);
    free(logits);
    fwd_close(m);
    ckpt_close(&ck);
}

int main(void)
{
    const char *models = getenv("FLASHIFY_MODELS");
    if (!models)
        models = "examples";
    greedy(models, "stories260K");
    greedy(models, "stories260K-bf16");
    if (failures) {
        fprintf(stderr, "test_forward: %d failure(s)\n", failures);
        return 1;
    }
    printf("test_forward: ok\n");
    return 0;
}
