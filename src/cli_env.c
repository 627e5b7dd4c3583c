/* cli_env.c — the environment, read once (see cli.h).
 *
 * The library reads no environment variable: this table names every one
 * the hub interprets, and cli_hub_env() copies their values into the
 * hub_env the library takes (hub.h says what each means). */
#include "cli.h"

#include <stddef.h>
#include <stdlib.h>

static const struct {
    const char *name;
    size_t offset;
} VARS[] = {
#define V(name, field) {name, offsetof(hub_env, field)}
    V("HF_ENDPOINT", hf_endpoint),
    V("HF_TOKEN", hf_token),
    V("HUGGING_FACE_HUB_TOKEN", hugging_face_hub_token),
    V("HF_TOKEN_PATH", hf_token_path),
    V("HF_HOME", hf_home),
    V("XDG_CACHE_HOME", xdg_cache_home),
    V("HOME", home),
    V("HF_HUB_CACHE", hf_hub_cache),
    V("HUGGINGFACE_HUB_CACHE", huggingface_hub_cache),
    V("HF_HUB_OFFLINE", hf_hub_offline),
    V("TRANSFORMERS_OFFLINE", transformers_offline),
    V("HF_HUB_DISABLE_SYMLINKS", hf_hub_disable_symlinks),
    V("HF_HUB_ETAG_TIMEOUT", hf_hub_etag_timeout),
    V("HF_HUB_DOWNLOAD_TIMEOUT", hf_hub_download_timeout),
    V("CURL_CA_BUNDLE", curl_ca_bundle),
    V("SSL_CERT_FILE", ssl_cert_file),
    V("SSL_CERT_DIR", ssl_cert_dir),
    V("FLASHIFY_HUB_BACKOFF_SCALE", backoff_scale),
    V("FLASHIFY_HASH_THREAD", hash_thread),
#undef V
};

void cli_hub_env(hub_env *e)
{
    for (size_t i = 0; i < sizeof VARS / sizeof VARS[0]; i++)
        *(const char **)((char *)e + VARS[i].offset) = getenv(VARS[i].name);
}
