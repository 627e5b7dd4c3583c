/* fuzz_ckpt_common.h — what the checkpoint harnesses do with a directory:
 * open it, and when that succeeds, look every tensor up, read the small
 * float ones, and build the fold plan (from the table or a --plan file).  A rejection must be a one-line
 * message; nothing may crash, leak or read out of bounds. */
#ifndef FLASHIFY_FUZZ_CKPT_COMMON_H
#define FLASHIFY_FUZZ_CKPT_COMMON_H

#include "fuzz_util.h"
#include "flashify/checkpoint.h"
#include "flashify/plan.h"

/* FUZZ_VERBOSE=1 prints every rejection (to see what seeds reach). */
static void check_message(fl_status st, const fl_error *err)
{
    static int verbose = -1;
    if (verbose < 0) verbose = getenv("FUZZ_VERBOSE") != NULL;
    if (verbose) fprintf(stderr, "rejected (%d): %s\n", st, err->msg);
    if (st != FL_EINPUT && st != FL_EIO) {
        fprintf(stderr, "unexpected status %d: %s\n", st, err->msg);
        abort();
    }
    if (!err->msg[0] || strchr(err->msg, '\n')) {
        fprintf(stderr, "bad message: \"%s\"\n", err->msg);
        abort();
    }
}

/* plan_file: a --plan FILE to build the plan from, or NULL for the table. */
static void exercise_dir(const char *dir, const char *plan_file)
{
    checkpoint ck;
    fl_error err = {0};
    fl_status st = ckpt_open(dir, &ck, &err);
    if (st != FL_OK) {
        check_message(st, &err);
        return;
    }
    for (size_t i = 0; i < ck.n_tensors; i++) {
        const ckpt_tensor *t = &ck.tensors[i];
        if (ckpt_find(&ck, t->name) == NULL) abort();
        if (t->shard >= ck.n_shards) abort();
        double v[256];
        size_t n;
        if (st_dtype_is_foldable(t->t->dtype) && st_nbytes(t->t) <= 512) {
            fl_error e2 = {0};
            fl_status s2 = ckpt_read_vector(&ck, t, v, 256, &n, &e2);
            if (s2 != FL_OK) check_message(s2, &e2);
        }
    }
    for (int nested = 0; nested <= 1; nested++) {
        ckpt_view v = ckpt_config_view(&ck.cfg, nested);
        (void)ckpt_view_num(v, "rms_norm_eps", 1e-6, 1e-6);
        (void)ckpt_view_int(v, "vocab_size", 0);
        (void)ckpt_view_set(v, "q_lora_rank");
    }
    plan_options opt = {0};
    opt.plan_file = plan_file;
    fold_plan plan;
    memset(&plan, 0, sizeof plan);
    fl_error e3 = {0};
    st = plan_build(&ck, &opt, &plan, &e3);
    if (st == FL_OK) {
        for (size_t i = 0; i < plan.n_out; i++)
            if (plan_find_out(&plan, plan.out[i].name) != &plan.out[i]) abort();
        if (getenv("FUZZ_VERBOSE")) fprintf(stderr, "accepted: %zu tensors, %zu out\n", ck.n_tensors, plan.n_out);
    } else {
        check_message(st, &e3);
    }
    plan_free(&plan); /* also after a failure (plan.h's contract, as cli.c does) */
    ckpt_close(&ck);
}

#endif
