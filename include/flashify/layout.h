/* layout.h — the output's files: which tensors go into which file, each
 * file's planned safetensors header, the index, and the fingerprint of
 * everything that decides the bytes (for --resume).
 *
 * Everything here is derived from the source headers and the plan alone,
 * before a byte is written, so a resumed run can compare what it would
 * write with what an earlier run wrote. */
#ifndef FLASHIFY_LAYOUT_H
#define FLASHIFY_LAYOUT_H

#include <stdint.h>

#include "flashify/checkpoint.h"
#include "flashify/plan.h"
#include "flashify/txn.h"

typedef struct {
    char *file;                 /* output file name (relative) */
    const out_tensor **t;       /* its tensors, in plan order */
    size_t n, cap;
    const ckpt_shard *meta_src; /* same-name layout: metadata comes from here */
    int skip;                   /* a source shard that held only dropped norms */
    unsigned mode;              /* permission bits: its source file's, or the
                                   most restrictive of the shards' (re-sharded) */
    /* The planned header. */
    st_tensor *ts;              /* its tensors with their offsets in the file */
    size_t *order;              /* ts in file order */
    st_meta *meta;
    size_t n_meta;
    char *header;               /* length prefix + padded JSON */
    size_t header_size;
    uint64_t data_bytes;
} out_file;

typedef struct {
    out_file *f;
    size_t n;
    size_t *file_of;            /* plan->out[i] is written to f[file_of[i]] */
    int want_index;             /* write model.safetensors.index.json */
    uint64_t tensor_bytes;      /* sum of data_bytes: the index's total_size */
} out_layout;

/* The default layout mirrors the source: same file names, each with its own
 * tensors (a materialised lm_head sits with the embedding).  With
 * max_shard_size > 0 the tensors are re-packed in order into
 * model-%05d-of-%05d.safetensors.  `label` (the output directory) names the
 * files in messages.  Returns FL_OK, FL_EINPUT (an alias that would change
 * meaning) or FL_EIO (out of memory). */
fl_status layout_build(const checkpoint *ck, const fold_plan *plan, uint64_t max_shard_size,
                       const char *label, out_layout *l, fl_error *err);
void layout_free(out_layout *l);

/* model.safetensors.index.json in huggingface_hub's format (indent 2,
 * weight_map sorted), keeping the source's extra metadata keys.  *text is
 * malloc'd. */
fl_status layout_index(const checkpoint *ck, const fold_plan *plan, const out_layout *l, char **text,
                       size_t *len, fl_error *err);

/* The fingerprint (txn.h) of everything that determines the output
 * shards' bytes: the flashify version, each source shard's identity (name,
 * device, inode, size, modification time), every output tensor's
 * operation, source location, dtype and shape, each fold's norm values and
 * gain, and every planned header. */
void layout_fingerprint(const checkpoint *ck, const fold_plan *plan, const out_layout *l,
                        unsigned char fp[TXN_FP_BYTES]);

#endif
