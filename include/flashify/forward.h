/* forward.h — a reference forward pass over a checkpoint directory.
 *
 * Computes the logits a Hugging Face *ForCausalLM would compute for a token
 * sequence (one causal pass, no KV cache), for every family the fold
 * supports.  It is the "does the output still compute what the source
 * computes" half of `flashify verify`, so it deliberately does NOT read the
 * architecture table of arch.h: its own family table (src/forward_table.c)
 * is written from the modeling files (docs/architectures.md), and a wrong
 * fold rule in arch.c shows up as a logit difference here.
 *
 * Numerics: activations are float32 and every dot product accumulates in
 * float32 (AVX2/FMA when the CPU has it); norm statistics, softmax and
 * RoPE angles in double.  Weights are never cast to the activation dtype
 * (HF bf16 models round every activation to bf16; we do not), so the
 * comparison sees the fold's rounding and nothing else.  Matrices are
 * streamed from the safetensors files with pread in blocks of rows by a few
 * threads; only norm and bias vectors are held in memory. */
#ifndef FLASHIFY_FORWARD_H
#define FLASHIFY_FORWARD_H

#include <stddef.h>
#include <stdint.h>

#include "flashify/checkpoint.h"
#include "flashify/error.h"

typedef struct fwd_model fwd_model;

/* Builds the forward pass for the open checkpoint `ck` (which must outlive
 * the model).  `threads` <= 0 means one per online CPU.  Fails with
 * FL_EINPUT and a message naming the tensor or config key when the family,
 * a rope_scaling type or a shape is not supported, FL_EIO on read errors. */
fl_status fwd_open(const checkpoint *ck, int threads, fwd_model **out,
                   fl_error *err);
void fwd_close(fwd_model *m);

/* Vocabulary size (rows of the output head) and the config's BOS id (or 1
 * when absent / out of range, clamped into the vocabulary). */
long fwd_vocab(const fwd_model *m);
long fwd_bos(const fwd_model *m);
/* How many token ids the pass embeds (ids must be below it): the
 * embedding's rows, or fewer where a family embeds a part of the
 * vocabulary only (Gemma 3n's per-layer embeddings cover the text ids,
 * not the multimodal soft tokens above them). */
long fwd_tokens(const fwd_model *m);
/* What runs, for the result line ("qwen3_moe, 3 layers, hidden 32, 4 heads
 * (2 kv), vocab 96, BF16, MoE in 2 of 3 layers (fused experts [E, 2I, H])"),
 * static per model. */
const char *fwd_describe(const fwd_model *m);

/* Progress of fwd_logits, in bytes of weights: fn(ctx, done, total) from
 * the calling thread after each matrix product, total being every matrix
 * bound (an expert no token was routed to counts as done, unread); the
 * last call of a pass has done == total.  fn NULL: none (the default). */
typedef void (*fwd_progress_fn)(void *ctx, uint64_t done, uint64_t total);
void fwd_set_progress(fwd_model *m, fwd_progress_fn fn, void *ctx);

/* Pinning the MoE routers for a comparison.  A router's top-k is a
 * discontinuous choice: at a near tie, rounding (a folded BF16 weight, a
 * different kernel) may pick another expert, which changes that token's
 * output by far more than the rounding itself.  fwd_route_record makes m's
 * passes remember every token's experts; fwd_route_replay makes m's passes
 * use the experts `from` recorded in its last pass, weighted by m's own
 * router, and count the decisions where m's own choice differed.  Both
 * models must run the same tokens (pinning stops, counted as lost, when
 * the decisions do not line up).  fwd_route_stats: decisions taken and
 * flipped in the last pass, and whether pinning was lost. */
void fwd_route_record(fwd_model *m);
void fwd_route_replay(fwd_model *m, const fwd_model *from);
void fwd_route_stats(const fwd_model *m, long *decisions, long *flips, int *lost);
/* The same for the DSA lightning indexer (DeepSeek-V3.2, GLM-5), whose
 * top-k choice of keys is pinned alongside: the query rows of the last
 * replayed pass that had a real choice (more keys than index_topk) and
 * those where m's own selection differed; and, because a kept choice
 * hides the scores, the index scores compared with the recorded ones
 * (the first 64 query positions of every layer): how many, the largest
 * difference relative to the layer's largest score, and in which layer
 * (-1: none).  All 0 for a model without an indexer. */
void fwd_index_stats(const fwd_model *m, long *rows, long *flips, long *compared, double *max_rel,
                     long *worst_layer, int *lost);

/* Runs the model causally over tokens[0..n) and writes n * fwd_vocab(m)
 * logits (row t = the prediction after tokens[0..t]).  Every id must be in
 * [0, vocab).  Returns FL_OK, FL_EINPUT (bad id), FL_EIO, or FL_EINTR. */
fl_status fwd_logits(fwd_model *m, const int32_t *tokens, size_t n,
                     float *logits, fl_error *err);

#endif
