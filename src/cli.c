/* cli.c — the flashify command line (placeholder until the converter lands). */
#include <stdio.h>
int main(void) { puts("flashify " FLASHIFY_VERSION); return 0; }
