/* fuzz_checkpoint_dir.c — libFuzzer harness for a whole checkpoint
 * directory held in the input.
 *
 * Format: the input is split at "\n@@@ ".  The first piece is config.json;
 * every other piece is "<name>\n<content>": a file of that name (a name
 * may contain one "sub/" level; anything else outside [A-Za-z0-9._-] is
 * dropped), or, when the name starts with "L:", a symlink to <content>
 * (relative targets only, at most one "../", so links can point just
 * outside the checkpoint -- at a decoy shard -- but never at /proc or a
 * FIFO elsewhere on the machine).  Each input gets a fresh directory,
 * which is opened, planned and removed. */
#include "fuzz_ckpt_common.h"

static unsigned long counter;

/* Keeps [A-Za-z0-9._-] and one '/', rejects ".." components. */
static int clean_name(const char *in, size_t n, char *out, size_t cap)
{
    size_t k = 0;
    int slashes = 0;
    for (size_t i = 0; i < n && k + 1 < cap; i++) {
        char c = in[i];
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
            c == '.' || c == '_' || c == '-')
            out[k++] = c;
        else if (c == '/' && k > 0 && !slashes) {
            out[k++] = c;
            slashes++;
        }
    }
    out[k] = 0;
    if (!k || out[k - 1] == '/') return -1;
    if (strcmp(out, ".") == 0 || strcmp(out, "..") == 0 || strstr(out, "../") ||
        strncmp(out, "./", 2) == 0 || (k >= 3 && strcmp(out + k - 3, "/..") == 0) ||
        (k >= 2 && strcmp(out + k - 2, "/.") == 0))
        return -1;
    return 0;
}

static void make_parent(const char *dir, const char *name)
{
    const char *slash = strchr(name, '/');
    if (!slash) return;
    char p[512];
    snprintf(p, sizeof p, "%s/%.*s", dir, (int)(slash - name), name);
    mkdir(p, 0755);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc; (void)argv;
    const char *root = fuzz_scratch();
    /* A decoy shard next to the checkpoints, for links that leave. */
    char p[256];
    snprintf(p, sizeof p, "%s/outside.safetensors", root);
    static const char decoy[] = "\x10\0\0\0\0\0\0\0{}              ";
    fuzz_write(p, decoy, 8 + 16);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *root = fuzz_scratch();
    char dir[256];
    snprintf(dir, sizeof dir, "%s/ck%lu", root, counter++);
    if (mkdir(dir, 0755) != 0) abort();
    const char *sep = "\n@@@ ";
    const uint8_t *p = data, *end = data + size;
    int first = 1, files = 0;
    while (p <= end && files < 64) {
        const uint8_t *cut = memmem(p, (size_t)(end - p), sep, 5);
        const uint8_t *stop = cut ? cut : end;
        char path[512], name[128];
        if (first) {
            snprintf(path, sizeof path, "%s/config.json", dir);
            fuzz_try_write(path, p, (size_t)(stop - p));
            first = 0;
        } else {
            const uint8_t *nl = memchr(p, '\n', (size_t)(stop - p));
            const uint8_t *body = nl ? nl + 1 : stop;
            size_t nlen = (size_t)((nl ? nl : stop) - p);
            int link = nlen >= 2 && p[0] == 'L' && p[1] == ':';
            if (clean_name((const char *)p + (link ? 2 : 0), nlen - (link ? 2 : 0), name, sizeof name) == 0) {
                make_parent(dir, name);
                snprintf(path, sizeof path, "%s/%s", dir, name);
                if (link) {
                    char target[128];
                    size_t tl = (size_t)(stop - body);
                    int ok = 0;
                    if (tl && tl < sizeof target) {
                        memcpy(target, body, tl);
                        target[tl] = 0;
                        ok = target[0] != '/' && !memchr(body, 0, tl) &&
                             !strstr(target, "../..") && !strstr(target, "/../") &&
                             !strstr(target, "proc") && !strstr(target, "dev");
                    }
                    if (ok) (void)!symlink(target, path);
                } else {
                    /* A name used twice: the last content wins. */
                    struct stat sb;
                    if (lstat(path, &sb) == 0 && !S_ISREG(sb.st_mode)) goto next;
                    fuzz_try_write(path, body, (size_t)(stop - body));
                }
                files++;
            }
        }
    next:
        if (!cut) break;
        p = cut + 5;
    }
    exercise_dir(dir, NULL);
    fuzz_rm_tree(dir);
    return 0;
}
