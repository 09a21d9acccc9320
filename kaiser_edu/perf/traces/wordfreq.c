/* wordfreq: count the words of standard input in an open-addressing hash table and print
 * the ten most frequent. A small real program for the performance lab's traces: it reads
 * its input with read(2) in 4 KiB pieces (a system call per piece), works on a 1 MiB hash
 * table (256 4 KiB pages: more than the L1 TLB holds), and writes its result with write(2).
 * Built and traced by make_traces.sh. */
#include <string.h>
#include <unistd.h>

#define SLOTS (1 << 14)
struct slot { char word[48]; unsigned long count; unsigned long hash; };
static struct slot table[SLOTS];  /* 16384 x 64 bytes = 1 MiB */

static unsigned long fnv1a(const char *s, size_t n) {
    unsigned long h = 1469598103934665603UL;
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 1099511628211UL;
    return h;
}

static void count(const char *w, size_t n) {
    if (n == 0 || n >= sizeof table[0].word) return;
    unsigned long h = fnv1a(w, n);
    for (unsigned long i = h;; i++) {
        struct slot *s = &table[i & (SLOTS - 1)];
        if (s->count == 0) { memcpy(s->word, w, n); s->word[n] = 0; s->hash = h; s->count = 1; return; }
        if (s->hash == h && strncmp(s->word, w, n) == 0 && s->word[n] == 0) { s->count++; return; }
    }
}

static int lower_alpha(int c) {
    if (c >= 'A' && c <= 'Z') return c - 'A' + 'a';
    return (c >= 'a' && c <= 'z') ? c : 0;
}

int main(void) {
    char buf[4096], word[48];
    size_t n = 0;
    ssize_t got;
    while ((got = read(0, buf, sizeof buf)) > 0) {
        for (ssize_t i = 0; i < got; i++) {
            int c = lower_alpha(buf[i]);
            if (c && n < sizeof word) word[n++] = (char)c;
            else { count(word, n); n = 0; }
        }
    }
    count(word, n);
    for (int k = 0; k < 10; k++) {  /* the ten largest counts, by selection */
        struct slot *best = 0;
        for (int i = 0; i < SLOTS; i++)
            if (table[i].count && (!best || table[i].count > best->count)) best = &table[i];
        if (!best) break;
        char line[80];
        int len = 0;
        unsigned long v = best->count;
        char digits[24];
        int d = 0;
        do { digits[d++] = (char)('0' + v % 10); v /= 10; } while (v);
        while (d) line[len++] = digits[--d];
        line[len++] = ' ';
        for (const char *p = best->word; *p; p++) line[len++] = *p;
        line[len++] = '\n';
        write(1, line, (size_t)len);
        best->count = 0;
    }
    return 0;
}
