/* queries._fastcount: the hot loop of `queries build` in C.
 *
 * From the decompressed bytes of a dump to the spill files, this does what the Python reference
 * does (queries/dump.py with expat, queries/wikitext.py, Counter, queries/counting.py), with the
 * same result to the character; tests/test_queries_fast.py compares both on the real fixture, on
 * generated dumps and on random markup:
 *
 *     <page> bytes -> ns, redirect, <text>  (scan_page; anything unusual -> Unsupported -> expat)
 *     text -> strip_markup -> count_tokens -> word and word-pair counts  (count_page)
 *     counts -> marshal records per partition  (Counts.spill)
 *
 * Each step of strip_markup is one regular expression (or one small scanner) in Python. Here each
 * is a hand-written left-to-right scanner with the same leftmost, non-overlapping, greedy/lazy
 * semantics as Python's `re.sub`, applied in the same order, each pass rewriting the previous
 * pass's output in place. The comment above each pass quotes the pattern it reproduces; the
 * reasoning for why a single forward scan gives exactly what the backtracking regex engine gives
 * is written next to it.
 *
 * Text is handled as UTF-32 code points; character classes are Python's: `\s` is
 * Py_UNICODE_ISSPACE, `\w` is Py_UNICODE_ISALNUM or '_', as in the `re` module.
 *
 * Counting: words are interned in an open-addressing hash table; a bigram is the pair of word ids
 * packed in 64 bits, counted in a second table. The caller spills (Counts.spill) when the tables
 * hold more than its threshold, so memory stays bounded. The GIL is released while pages are
 * processed, so a decompression thread runs at the same time. setup.py builds this file twice, the
 * second time with -mavx2 (see find_char).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef __linux__
#include <sys/mman.h>
#endif

typedef uint32_t U;

/* The two hash tables are read at random places, one cache line per lookup. With 4 KB pages a
 * table of tens of MB spans thousands of pages, more than the TLB maps, so most lookups also pay a
 * page-table walk; 2 MB pages (Linux transparent huge pages, asked for with madvise) remove most
 * of them. Tables of 2 MB and more come zeroed from mmap; smaller ones from calloc. */
#define HUGE_FROM ((size_t)2 << 20)
static void *table_alloc(size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (bytes >= HUGE_FROM) {
        void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) return NULL;
        madvise(p, bytes, MADV_HUGEPAGE);
        return p;
    }
#endif
    return calloc(1, bytes);
}
static void table_free(void *p, size_t bytes) {
    if (!p) return;
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (bytes >= HUGE_FROM) { munmap(p, bytes); return; }
#endif
    free(p);
}

/* ---------------------------------------------------------------------------------------------- */
/* character classes                                                                                */

static unsigned char ascii_word[128];   /* \w without '_' : [0-9A-Za-z] */

static inline int is_space(U c) {
    if (c < 128) return c == ' ' || (c >= 9 && c <= 13) || (c >= 28 && c <= 31);
    return Py_UNICODE_ISSPACE(c);
}
/* \w of re, minus '_' (the tokenizer sees '_' as a space; the \b checks use is_word below) */
static inline int is_alnum(U c) {
    if (c < 128) return ascii_word[c];
    return Py_UNICODE_ISALNUM(c);
}
static inline int is_word(U c) { return c == '_' || is_alnum(c); }

/* re.IGNORECASE match of one code point against a lowercase ASCII letter of a pattern literal:
 * the letter, its uppercase, and the few non-ASCII characters `re` folds onto them (checked
 * against `re` over every code point in tests/test_queries_fast.py). */
static inline int fold_eq(U c, char L) {
    if (c == (U)L || c == (U)(L - 32)) return 1;
    if (c < 128) return 0;
    switch (L) {
    case 'i': return c == 0x130 || c == 0x131;
    case 'k': return c == 0x212A;
    case 's': return c == 0x17F;
    default: return 0;
    }
}

/* ---------------------------------------------------------------------------------------------- */
/* growable buffers (plain malloc: these run without the GIL)                                      */

typedef struct { U *p; Py_ssize_t n, cap; } Buf;

static int buf_reserve(Buf *b, Py_ssize_t cap) {
    if (cap <= b->cap) return 0;
    Py_ssize_t c = b->cap ? b->cap : 4096;
    while (c < cap) c *= 2;
    U *p = (U *)realloc(b->p, (size_t)c * sizeof(U));
    if (!p) return -1;
    b->p = p;
    b->cap = c;
    return 0;
}
static inline void put(Buf *b, U c) { b->p[b->n++] = c; }
/* Passes run in place: each writes its output over its own input, never ahead of where it
 * reads (every pass only deletes, or replaces a match by something no longer than the match), so
 * a pass that changes nothing copies nothing. */
static inline void put_n(Buf *b, const U *s, Py_ssize_t n) {
    if (n > 0) {
        if (b->p + b->n != s) memmove(b->p + b->n, s, (size_t)n * sizeof(U));
        b->n += n;
    }
}

/* Skipping to the next interesting character is most of the work of every pass, so it is done
 * 4 code points at a time with SSE2 (part of every x86-64 CPU; plain loops elsewhere), or 8 with
 * AVX2: setup.py builds this file twice, as queries._fastcount and, with -mavx2, as
 * queries._fastcount_avx2, which queries/fastcount.py loads when the CPU has AVX2. */
#if defined(__SSE2__)
#include <emmintrin.h>
#define VEC 1
#endif
#if defined(__AVX2__)
#include <immintrin.h>
#endif
#ifndef FASTCOUNT_MODNAME
#define FASTCOUNT_MODNAME _fastcount
#endif
#define CAT_(a, b) a##b
#define CAT(a, b) CAT_(a, b)
#define STR_(x) #x
#define STR(x) STR_(x)

/* first index >= from where s[i] == c, or n */
static inline Py_ssize_t find_char(const U *s, Py_ssize_t n, Py_ssize_t from, U c) {
    Py_ssize_t i = from;
#ifdef __AVX2__
    __m256i w = _mm256_set1_epi32((int)c);
    for (; i + 8 <= n; i += 8) {
        __m256i e = _mm256_cmpeq_epi32(_mm256_loadu_si256((const __m256i *)(s + i)), w);
        int m = _mm256_movemask_ps(_mm256_castsi256_ps(e));
        if (m) return i + __builtin_ctz((unsigned)m);
    }
#endif
#ifdef VEC
    __m128i v = _mm_set1_epi32((int)c);
    for (; i + 8 <= n; i += 8) {
        __m128i a = _mm_cmpeq_epi32(_mm_loadu_si128((const __m128i *)(s + i)), v);
        __m128i b = _mm_cmpeq_epi32(_mm_loadu_si128((const __m128i *)(s + i + 4)), v);
        int m = _mm_movemask_ps(_mm_castsi128_ps(a)) | (_mm_movemask_ps(_mm_castsi128_ps(b)) << 4);
        if (m) return i + __builtin_ctz((unsigned)m);
    }
#endif
    for (; i < n; i++) if (s[i] == c) return i;
    return n;
}
/* first index >= from where s[i] is c1 or c2, or n */
static inline Py_ssize_t find_char2(const U *s, Py_ssize_t n, Py_ssize_t from, U c1, U c2) {
    Py_ssize_t i = from;
#ifdef __AVX2__
    __m256i w1 = _mm256_set1_epi32((int)c1), w2 = _mm256_set1_epi32((int)c2);
    for (; i + 8 <= n; i += 8) {
        __m256i x = _mm256_loadu_si256((const __m256i *)(s + i));
        int m = _mm256_movemask_ps(_mm256_castsi256_ps(_mm256_or_si256(_mm256_cmpeq_epi32(x, w1), _mm256_cmpeq_epi32(x, w2))));
        if (m) return i + __builtin_ctz((unsigned)m);
    }
#endif
#ifdef VEC
    __m128i v1 = _mm_set1_epi32((int)c1), v2 = _mm_set1_epi32((int)c2);
    for (; i + 4 <= n; i += 4) {
        __m128i x = _mm_loadu_si128((const __m128i *)(s + i));
        __m128i e = _mm_or_si128(_mm_cmpeq_epi32(x, v1), _mm_cmpeq_epi32(x, v2));
        int m = _mm_movemask_ps(_mm_castsi128_ps(e));
        if (m) return i + __builtin_ctz((unsigned)m);
    }
#endif
    for (; i < n; i++) if (s[i] == c1 || s[i] == c2) return i;
    return n;
}
/* first index >= from where s[i] is c1, c2 or c3, or n */
static inline Py_ssize_t find_char3(const U *s, Py_ssize_t n, Py_ssize_t from, U c1, U c2, U c3) {
    Py_ssize_t i = from;
#ifdef __AVX2__
    __m256i w1 = _mm256_set1_epi32((int)c1), w2 = _mm256_set1_epi32((int)c2), w3 = _mm256_set1_epi32((int)c3);
    for (; i + 8 <= n; i += 8) {
        __m256i x = _mm256_loadu_si256((const __m256i *)(s + i));
        __m256i e = _mm256_or_si256(_mm256_or_si256(_mm256_cmpeq_epi32(x, w1), _mm256_cmpeq_epi32(x, w2)),
                                    _mm256_cmpeq_epi32(x, w3));
        int m = _mm256_movemask_ps(_mm256_castsi256_ps(e));
        if (m) return i + __builtin_ctz((unsigned)m);
    }
#endif
#ifdef VEC
    __m128i v1 = _mm_set1_epi32((int)c1), v2 = _mm_set1_epi32((int)c2), v3 = _mm_set1_epi32((int)c3);
    for (; i + 4 <= n; i += 4) {
        __m128i x = _mm_loadu_si128((const __m128i *)(s + i));
        __m128i e = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi32(x, v1), _mm_cmpeq_epi32(x, v2)),
                                 _mm_cmpeq_epi32(x, v3));
        int m = _mm_movemask_ps(_mm_castsi128_ps(e));
        if (m) return i + __builtin_ctz((unsigned)m);
    }
#endif
    for (; i < n; i++) if (s[i] == c1 || s[i] == c2 || s[i] == c3) return i;
    return n;
}
/* first index >= from where an ASCII string starts, or -1 */
static Py_ssize_t find_str(const U *s, Py_ssize_t n, Py_ssize_t from, const char *pat) {
    Py_ssize_t m = (Py_ssize_t)strlen(pat);
    for (Py_ssize_t i = from; i + m <= n; i++) {
        i = find_char(s, n, i, (U)pat[0]);
        if (i + m > n) return -1;
        Py_ssize_t k = 1;
        while (k < m && s[i + k] == (U)pat[k]) k++;
        if (k == m) return i;
    }
    return -1;
}
static inline int starts(const U *s, Py_ssize_t n, Py_ssize_t i, const char *pat) {
    for (Py_ssize_t k = 0; pat[k]; k++) if (i + k >= n || s[i + k] != (U)pat[k]) return 0;
    return 1;
}

/* ---------------------------------------------------------------------------------------------- */
/* 1. comments: <!--.*?(?:-->|\Z)   (re.S)                                                         */
/* Lazy: the comment ends at the first "-->" that starts after "<!--"; unclosed runs to the end.    */

static void pass_comments(const U *s, Py_ssize_t n, Buf *o) {
    Py_ssize_t i = 0, last = 0;
    while ((i = find_str(s, n, i, "<!--")) >= 0) {
        put_n(o, s + last, i - last);
        Py_ssize_t k = find_str(s, n, i + 4, "-->");
        last = i = (k < 0) ? n : k + 3;
    }
    put_n(o, s + last, n - last);
}

/* ---------------------------------------------------------------------------------------------- */
/* 2. tags dropped with their content                                                              */

static const char *DROP_TAGS[] = {
    "ref", "math", "gallery", "timeline", "score", "syntaxhighlight", "source", "chem", "ce",
    "hiero", "imagemap", "mapframe", "maplink", "graph", "templatedata", "references", "inputbox",
    "categorytree", NULL};

/* `(?:ref|math|...)\b` at s[i] under re.I: the length of the name, or 0. At most one name can
 * pass: two names matching at i would make one a prefix of the other, and the longer one goes on
 * with a letter, which fails the shorter one's \b. So list order does not matter. */
static Py_ssize_t drop_name(const U *s, Py_ssize_t n, Py_ssize_t i) {
    /* most tags (</ref>, <br>, <small>, <sup> ...) are out at the first letter */
    if (i >= n) return 0;
    U f = s[i];
    if (f == 0x17F) f = 's';
    else if (f == 0x130 || f == 0x131) f = 'i';
    else if (f == 0x212A) f = 'k';
    else if (f < 128) f |= 32;
    if (f != 'r' && f != 'm' && f != 'g' && f != 't' && f != 's' && f != 'c' && f != 'h' && f != 'i')
        return 0;
    for (int t = 0; DROP_TAGS[t]; t++) {
        if ((U)DROP_TAGS[t][0] != f) continue;
        const char *name = DROP_TAGS[t];
        Py_ssize_t k = 0;
        while (name[k] && i + k < n && fold_eq(s[i + k], name[k])) k++;
        if (name[k]) continue;
        if (i + k == n || !is_word(s[i + k])) return k;
    }
    return 0;
}

/* 2a. <(?:names)\b[^>]* then "/>"   (re.I)
 * [^>]* is greedy and stops before the first '>' after the name; "/>" then matches only if that
 * '>' is preceded by '/' (inside the [^>]* run). Backtracking to an earlier stop cannot help: the
 * '>' of "/>" would have to be earlier than the first '>'. */
static void pass_drop_selfclosing(const U *s, Py_ssize_t n, Buf *o) {
    Py_ssize_t last = 0, gt = -1;  /* gt: first '>' at or after the last position asked for */
    for (Py_ssize_t i = 0; (i = find_char(s, n, i, '<')) < n; i++) {
        Py_ssize_t L = drop_name(s, n, i + 1);
        if (!L) continue;
        Py_ssize_t from = i + 1 + L;
        if (gt < from) gt = find_char(s, n, from, '>');
        if (gt < n && gt - 1 >= from && s[gt - 1] == '/') {
            put_n(o, s + last, i - last);
            last = gt + 1;
            i = gt;
        }
    }
    put_n(o, s + last, n - last);
}

/* 2b. <(names)\b[^>]*>.*?(?:</\1\s*>|\Z)   (re.I | re.S)
 * The opening tag runs to the first '>' after the name (no '>' at all: no match). The lazy .*?
 * then stops at the first "</" + the same name + \s* + ">"; the backreference under re.I compares
 * simple lowercase forms, as `re` does. No closing tag: the match runs to the end of the text. */
static int backref_eq(const U *a, const U *b, Py_ssize_t L) {
    for (Py_ssize_t k = 0; k < L; k++)
        if (a[k] != b[k] && Py_UNICODE_TOLOWER(a[k]) != Py_UNICODE_TOLOWER(b[k])) return 0;
    return 1;
}

static void pass_drop_blocks(const U *s, Py_ssize_t n, Buf *o) {
    Py_ssize_t last = 0, gt = -1;
    for (Py_ssize_t i = 0; (i = find_char(s, n, i, '<')) < n; i++) {
        Py_ssize_t L = drop_name(s, n, i + 1);
        if (!L) continue;
        Py_ssize_t from = i + 1 + L;
        if (gt < from) gt = find_char(s, n, from, '>');
        if (gt >= n) continue;
        const U *name = s + i + 1;
        Py_ssize_t end = n;  /* \Z */
        for (Py_ssize_t p = gt + 1; (p = find_char(s, n, p, '<')) + 1 < n; p++) {
            if (s[p + 1] != '/') continue;
            if (p + 2 + L > n || !backref_eq(s + p + 2, name, L)) continue;
            Py_ssize_t q = p + 2 + L;
            while (q < n && is_space(s[q])) q++;
            if (q < n && s[q] == '>') { end = q + 1; break; }
        }
        put_n(o, s + last, i - last);
        last = end;
        i = end - 1;
    }
    if (last < n) put_n(o, s + last, n - last);
}

/* ---------------------------------------------------------------------------------------------- */
/* 3. templates {{...}} and tables {|...|}, nested (drop_templates_and_tables in wikitext.py)       */
/* Tokens as `\{\{|\{\||\|\}\}|\|\}|\}\}` finds them: leftmost, alternatives in that order.         */

enum { T_TPL_OPEN = 1, T_TBL_OPEN, T_TPL_TBL_CLOSE, T_TBL_CLOSE, T_TPL_CLOSE };

/* the stack only ever holds two kinds of opener: a byte per level (grown as needed, kept) */
static __thread char *stack = NULL;
static __thread Py_ssize_t stack_cap = 0;

static void pass_braces(const U *s, Py_ssize_t n, Buf *o) {
    Py_ssize_t depth = 0, keep_from = 0, open_at = 0;
    Py_ssize_t i = 0;
    while ((i = find_char3(s, n, i, '{', '|', '}')) + 1 < n) {
        U c = s[i], d = s[i + 1];
        int tok = 0, len = 2;
        if (c == '{' && d == '{') tok = T_TPL_OPEN;
        else if (c == '{' && d == '|') tok = T_TBL_OPEN;
        else if (c == '|' && d == '}' && i + 2 < n && s[i + 2] == '}') { tok = T_TPL_TBL_CLOSE; len = 3; }
        else if (c == '|' && d == '}') tok = T_TBL_CLOSE;
        else if (c == '}' && d == '}') tok = T_TPL_CLOSE;
        if (!tok) { i++; continue; }
        Py_ssize_t start = i;
        i += len;
        if (tok == T_TPL_OPEN || tok == T_TBL_OPEN) {
            if (!depth) {
                put_n(o, s + keep_from, start - keep_from);
                open_at = i;
            }
            if (depth == stack_cap) {
                Py_ssize_t cap = stack_cap ? stack_cap * 2 : 64;
                char *p = (char *)realloc(stack, (size_t)cap);
                if (!p) { depth = 0; keep_from = n; break; }   /* out of memory: drop the rest */
                stack = p;
                stack_cap = cap;
            }
            stack[depth++] = (char)tok;
            continue;
        }
        if (!depth) continue;
        char top = stack[depth - 1];
        if ((tok == T_TPL_CLOSE || tok == T_TPL_TBL_CLOSE) && top == T_TPL_OPEN) depth--;
        else if ((tok == T_TBL_CLOSE || tok == T_TPL_TBL_CLOSE) && top == T_TBL_OPEN) depth--;
        else continue;
        if (!depth) keep_from = i;
    }
    if (depth) keep_from = open_at;  /* an unclosed opener keeps the text after it */
    put_n(o, s + keep_from, n - keep_from);
}

/* ---------------------------------------------------------------------------------------------- */
/* 4. <br\s*\/?> -> "\n" (re.I), then </?[A-Za-z][^<>]*> -> ""                                     */

static void pass_br(const U *s, Py_ssize_t n, Buf *o) {
    Py_ssize_t last = 0;
    for (Py_ssize_t i = 0; (i = find_char(s, n, i, '<')) + 2 < n; i++) {
        if (!fold_eq(s[i + 1], 'b') || !fold_eq(s[i + 2], 'r')) continue;
        Py_ssize_t q = i + 3;
        while (q < n && is_space(s[q])) q++;   /* \s* greedy; shorter runs leave a space next: no */
        if (q < n && s[q] == '/') q++;
        if (q < n && s[q] == '>') {
            put_n(o, s + last, i - last);
            put(o, '\n');
            last = q + 1;
            i = q;
        }
    }
    put_n(o, s + last, n - last);
}

/* /? is greedy, but without the '/' the next character would have to be a letter, and '/' is not:
 * so the tag is '<', an optional '/', an ASCII letter, then everything up to the first '<' or '>',
 * which must be '>'. */
static void pass_tags(const U *s, Py_ssize_t n, Buf *o) {
    Py_ssize_t last = 0;
    for (Py_ssize_t i = 0; (i = find_char(s, n, i, '<')) + 1 < n; i++) {
        Py_ssize_t k = i + 1;
        if (s[k] == '/') k++;
        if (k >= n || s[k] >= 128 || !((s[k] | 32) >= 'a' && (s[k] | 32) <= 'z')) continue;
        Py_ssize_t j = find_char2(s, n, k + 1, '<', '>');
        if (j < n && s[j] == '>') {
            put_n(o, s + last, i - last);
            last = j + 1;
            i = j;
        }
    }
    put_n(o, s + last, n - last);
}

/* ---------------------------------------------------------------------------------------------- */
/* 5. wiki links \[\[([^\[\]]*)\]\] -> _link(inner), innermost first, up to 8 rounds              */

static const char *DROP_NS[] = {"file", "image", "media", "category", NULL};

/* str.strip() bounds */
static void strip_bounds(const U *s, Py_ssize_t *a, Py_ssize_t *b) {
    while (*a < *b && is_space(s[*a])) (*a)++;
    while (*b > *a && is_space(s[*b - 1])) (*b)--;
}

/* Does ns.strip().lower() equal a dropped namespace or match
 * ^[a-z]{2,3}(?:-[a-z0-9]{2,8}){0,3}$|^simple$ ?  Only lowercase forms made of ASCII can: the one
 * non-ASCII character whose lowercase is ASCII is KELVIN SIGN -> 'k' (tested over all code points). */
static int drop_namespace(const U *s, Py_ssize_t a, Py_ssize_t b) {
    strip_bounds(s, &a, &b);
    char low[64];
    Py_ssize_t m = b - a;
    if (m <= 0 || m >= (Py_ssize_t)sizeof low) return 0;
    for (Py_ssize_t k = 0; k < m; k++) {
        U c = s[a + k];
        if (c == 0x212A) c = 'k';
        else if (c >= 128) return 0;
        else if (c >= 'A' && c <= 'Z') c += 32;
        low[k] = (char)c;
    }
    low[m] = 0;
    for (int t = 0; DROP_NS[t]; t++) if (!strcmp(low, DROP_NS[t])) return 1;
    if (!strcmp(low, "simple")) return 1;
    /* language code: parts separated by '-' */
    Py_ssize_t k = 0, parts = 0;
    while (1) {
        Py_ssize_t st = k;
        while (k < m && low[k] != '-') {
            char c = low[k];
            int ok = parts == 0 ? (c >= 'a' && c <= 'z') : ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'));
            if (!ok) return 0;
            k++;
        }
        Py_ssize_t len = k - st;
        if (parts == 0 ? (len < 2 || len > 3) : (len < 2 || len > 8)) return 0;
        parts++;
        if (k == m) return parts <= 4;
        k++;  /* the '-' */
    }
}

/* _link(): what a link shows. */
static void link_text(const U *s, Py_ssize_t a, Py_ssize_t b, Buf *o) {
    Py_ssize_t bar = a;
    while (bar < b && s[bar] != '|') bar++;
    int has_bar = bar < b;
    Py_ssize_t ta = a, tb = bar;          /* target */
    Py_ssize_t la = has_bar ? bar + 1 : b, lb = b;  /* label */
    Py_ssize_t sa = ta, sb = tb;          /* t = target.strip() */
    strip_bounds(s, &sa, &sb);
    if (sa < sb && s[sa] == ':') {
        if (has_bar && lb > la) put_n(o, s + la, lb - la);
        else put_n(o, s + sa + 1, sb - sa - 1);
        return;
    }
    Py_ssize_t colon = sa;
    while (colon < sb && s[colon] != ':') colon++;
    if (colon < sb && drop_namespace(s, sa, colon)) return;
    if (has_bar) {
        Py_ssize_t x = la, y = lb;
        strip_bounds(s, &x, &y);
        if (x < y) put_n(o, s + la, lb - la);
        else put_n(o, s + sa, sb - sa);   /* the pipe trick [[x|]] shows x */
        return;
    }
    put_n(o, s + ta, tb - ta);
}

/* One round of _LINK_RE.sub. From "[[" the inner part [^\[\]]* runs greedily to the first
 * bracket; the link matches only if that bracket starts "]]" (a shorter inner part would need
 * "]]" earlier, where there is no bracket). Returns the number of links replaced. */
static Py_ssize_t pass_links(const U *s, Py_ssize_t n, Buf *o) {
    Py_ssize_t last = 0, count = 0;
    for (Py_ssize_t i = 0; (i = find_char(s, n, i, '[')) + 1 < n; i++) {
        if (s[i + 1] != '[') continue;
        Py_ssize_t j = find_char2(s, n, i + 2, '[', ']');
        if (j + 1 < n && s[j] == ']' && s[j + 1] == ']') {
            put_n(o, s + last, i - last);
            link_text(s, i + 2, j, o);
            last = j + 2;
            i = j + 1;
            count++;
        }
    }
    put_n(o, s + last, n - last);
    return count;
}

/* ---------------------------------------------------------------------------------------------- */
/* 6. external links \[(?:https?:|ftp:|//)[^\s\]]*\s*([^\]]*)\] -> \1                              */
/* After the scheme, the URL run stops at the first space or ']', the space run follows, and the
 * label runs to the first ']' after the scheme; with no ']' left there is no match (no shorter
 * choice of the runs can produce one). */

static void pass_extlinks(const U *s, Py_ssize_t n, Buf *o) {
    Py_ssize_t last = 0, rb = -1;  /* rb: first ']' at or after the last position asked for */
    for (Py_ssize_t i = 0; (i = find_char(s, n, i, '[')) < n; i++) {
        Py_ssize_t k;
        if (starts(s, n, i + 1, "https:")) k = i + 7;
        else if (starts(s, n, i + 1, "http:")) k = i + 6;
        else if (starts(s, n, i + 1, "ftp:")) k = i + 5;
        else if (starts(s, n, i + 1, "//")) k = i + 3;
        else continue;
        if (rb < k) rb = find_char(s, n, k, ']');
        if (rb >= n) continue;
        Py_ssize_t g = k;
        while (g < rb && !is_space(s[g])) g++;     /* [^\s\]]* */
        while (g < rb && is_space(s[g])) g++;      /* \s* */
        put_n(o, s + last, i - last);
        put_n(o, s + g, rb - g);
        last = rb + 1;
        i = rb;
    }
    put_n(o, s + last, n - last);
}

/* ---------------------------------------------------------------------------------------------- */
/* 7. bare URLs (?:https?|ftp)://[^\s<>\]|]+ -> "" : _drop_urls() of wikitext.py, line by line      */

static Py_ssize_t url_match(const U *s, Py_ssize_t n, Py_ssize_t k) {
    Py_ssize_t q;
    if (starts(s, n, k, "https://")) q = k + 8;
    else if (starts(s, n, k, "http://")) q = k + 7;
    else if (starts(s, n, k, "ftp://")) q = k + 6;
    else return -1;
    Py_ssize_t e = q;
    while (e < n) {
        U c = s[e];
        if (c == '<' || c == '>' || c == ']' || c == '|' || is_space(c)) break;
        e++;
    }
    return e > q ? e : -1;
}

static void pass_urls(const U *s, Py_ssize_t n, Buf *o) {
    Py_ssize_t pos = 0;
    Py_ssize_t j = find_str(s, n, 0, "://");
    while (j >= 0) {
        for (Py_ssize_t k = j - 5; k <= j - 3; k++) {
            if (k < pos) continue;
            Py_ssize_t e = url_match(s, n, k);
            if (e >= 0) {
                put_n(o, s + pos, k - pos);
                pos = e;
                break;
            }
        }
        j = find_str(s, n, pos > j + 1 ? pos : j + 1, "://");
    }
    put_n(o, s + pos, n - pos);
}

/* ---------------------------------------------------------------------------------------------- */
/* 8. ''+ -> ""   9. __[A-Z]+__ -> ""                                                              */

static void pass_quotes(const U *s, Py_ssize_t n, Buf *o) {
    Py_ssize_t last = 0;
    for (Py_ssize_t i = 0; (i = find_char(s, n, i, '\'')) + 1 < n;) {
        if (s[i + 1] != '\'') { i++; continue; }
        put_n(o, s + last, i - last);
        while (i < n && s[i] == '\'') i++;
        last = i;
    }
    put_n(o, s + last, n - last);
}

static void pass_magic(const U *s, Py_ssize_t n, Buf *o) {
    Py_ssize_t last = 0;
    for (Py_ssize_t i = 0; (i = find_char(s, n, i, '_')) + 1 < n;) {
        if (s[i + 1] == '_') {
            Py_ssize_t e = i + 2;
            while (e < n && s[e] >= 'A' && s[e] <= 'Z') e++;
            if (e > i + 2 && e + 1 < n && s[e] == '_' && s[e + 1] == '_') {
                put_n(o, s + last, i - last);
                last = i = e + 2;
                continue;
            }
        }
        i++;
    }
    put_n(o, s + last, n - last);
}

/* ---------------------------------------------------------------------------------------------- */
/* 10. html.unescape: &(#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[^\t\n\f <&#;]{1,32};?)                       */
/* The tables are Python's own (html.entities.html5, html._invalid_charrefs,
 * html._invalid_codepoints), handed over once by queries/fastcount.py.                              */

typedef struct { char name[40]; U val[2]; int nval; } Entity;
static Entity *ent_tab = NULL;      /* open addressing, size ent_cap (power of 2) */
static Py_ssize_t ent_cap = 0;
static U invalid_charref[160];      /* 0 = not in the table; value+1 otherwise (or FFFD) */
static int invalid_charref_set[160];
static U *invalid_cp = NULL;        /* sorted */
static Py_ssize_t n_invalid_cp = 0;

static uint64_t fnv_bytes(const char *p, Py_ssize_t n) {
    uint64_t h = 1469598103934665603ULL;
    for (Py_ssize_t i = 0; i < n; i++) { h ^= (unsigned char)p[i]; h *= 1099511628211ULL; }
    return h;
}

static const Entity *ent_find(const U *s, Py_ssize_t m) {
    if (!ent_cap || m <= 0 || m >= 40) return NULL;
    char key[40];
    for (Py_ssize_t k = 0; k < m; k++) {
        if (s[k] >= 128) return NULL;  /* every entity name is ASCII */
        key[k] = (char)s[k];
    }
    uint64_t h = fnv_bytes(key, m);
    for (Py_ssize_t slot = (Py_ssize_t)(h & (uint64_t)(ent_cap - 1));; slot = (slot + 1) & (ent_cap - 1)) {
        const Entity *e = &ent_tab[slot];
        if (!e->name[0]) return NULL;
        if ((Py_ssize_t)strlen(e->name) == m && !memcmp(e->name, key, (size_t)m)) return e;
    }
}

static int is_invalid_cp(U c) {
    Py_ssize_t lo = 0, hi = n_invalid_cp;
    while (lo < hi) {
        Py_ssize_t mid = (lo + hi) / 2;
        if (invalid_cp[mid] < c) lo = mid + 1;
        else hi = mid;
    }
    return lo < n_invalid_cp && invalid_cp[lo] == c;
}

static inline int hexval(U c) {
    if (c >= '0' && c <= '9') return (int)(c - '0');
    if (c >= 'a' && c <= 'f') return (int)(c - 'a' + 10);
    if (c >= 'A' && c <= 'F') return (int)(c - 'A' + 10);
    return -1;
}

static void put_charref(Buf *o, uint64_t num) {
    if (num < 160 && invalid_charref_set[num]) { put(o, invalid_charref[num]); return; }
    if ((num >= 0xD800 && num <= 0xDFFF) || num > 0x10FFFF) { put(o, 0xFFFD); return; }
    if (is_invalid_cp((U)num)) return;
    put(o, (U)num);
}

static void pass_unescape(const U *s, Py_ssize_t n, Buf *o) {
    for (Py_ssize_t i = 0; i < n;) {
        Py_ssize_t amp = find_char(s, n, i, '&');
        put_n(o, s + i, amp - i);
        if ((i = amp) >= n) break;
        Py_ssize_t p = i + 1;
        if (p < n && s[p] == '#') {
            Py_ssize_t q = p + 1;
            uint64_t num = 0;
            if (q < n && s[q] >= '0' && s[q] <= '9') {             /* #[0-9]+;? */
                while (q < n && s[q] >= '0' && s[q] <= '9') {
                    if (num <= 0x10FFFF) num = num * 10 + (s[q] - '0');
                    q++;
                }
            } else if (q + 1 < n && (s[q] == 'x' || s[q] == 'X') && hexval(s[q + 1]) >= 0) {
                q++;                                                /* #[xX][0-9a-fA-F]+;? */
                while (q < n && hexval(s[q]) >= 0) {
                    if (num <= 0x10FFFF) num = num * 16 + (uint64_t)hexval(s[q]);
                    q++;
                }
            } else {            /* '#' is not in the name class: no match, '&' stays */
                put(o, s[i++]);
                continue;
            }
            if (q < n && s[q] == ';') q++;
            put_charref(o, num);
            i = q;
            continue;
        }
        /* [^\t\n\f <&#;]{1,32};? */
        Py_ssize_t q = p;
        while (q < n && q - p < 32) {
            U c = s[q];
            if (c == '\t' || c == '\n' || c == '\f' || c == ' ' || c == '<' || c == '&' || c == '#' || c == ';') break;
            q++;
        }
        if (q == p) { put(o, s[i++]); continue; }
        if (q < n && s[q] == ';') q++;
        Py_ssize_t m = q - p;
        const Entity *e = ent_find(s + p, m);
        if (e) {
            for (int k = 0; k < e->nval; k++) put(o, e->val[k]);
            i = q;
            continue;
        }
        /* the longest name that is a prefix (at least 2 characters), the rest kept as text */
        Py_ssize_t x;
        for (x = m - 1; x > 1; x--) {
            e = ent_find(s + p, x);
            if (e) break;
        }
        if (x > 1 && e) {
            for (int k = 0; k < e->nval; k++) put(o, e->val[k]);
            put_n(o, s + p + x, m - x);
        } else {
            put(o, '&');
            put_n(o, s + p, m);
        }
        i = q;
    }
}

/* ---------------------------------------------------------------------------------------------- */
/* strip_markup: the passes in wikitext.strip_markup's order                                       */

typedef struct { Buf a; } Work;   /* the page's text; every pass rewrites it in place */

#define RUN(pass) do { Buf o_ = {cur->p, 0, cur->cap}; pass(cur->p, cur->n, &o_); cur->n = o_.n; } while (0)

/* in: w->a holds the text; out: w->a holds the plain text. -1 on out of memory. */
static int strip_work(Work *w) {
    Buf *cur = &w->a;
    /* Every pass skips from one trigger character to the next (SSE2), so a pass whose trigger
     * the page lacks costs one fast scan and one memcpy. */
    RUN(pass_comments);
    RUN(pass_drop_selfclosing);
    RUN(pass_drop_blocks);
    RUN(pass_braces);
    RUN(pass_br);
    RUN(pass_tags);
    for (int round = 0; round < 8; round++) {
        Buf o = {cur->p, 0, cur->cap};
        Py_ssize_t c = pass_links(cur->p, cur->n, &o);
        cur->n = o.n;
        if (!c) break;
    }
    RUN(pass_extlinks);
    RUN(pass_urls);
    RUN(pass_quotes);
    RUN(pass_magic);
    RUN(pass_unescape);
    return 0;
}

/* widen a str into w->a */
static int load_text(Work *w, PyObject *text) {
    Py_ssize_t n = PyUnicode_GET_LENGTH(text);
    if (buf_reserve(&w->a, n + 1) < 0) return -1;
    int kind = PyUnicode_KIND(text);
    const void *data = PyUnicode_DATA(text);
    if (kind == PyUnicode_1BYTE_KIND) {
        const Py_UCS1 *p = (const Py_UCS1 *)data;
        for (Py_ssize_t i = 0; i < n; i++) w->a.p[i] = p[i];
    } else if (kind == PyUnicode_2BYTE_KIND) {
        const Py_UCS2 *p = (const Py_UCS2 *)data;
        for (Py_ssize_t i = 0; i < n; i++) w->a.p[i] = p[i];
    } else {
        memcpy(w->a.p, data, (size_t)n * sizeof(U));
    }
    w->a.n = n;
    return 0;
}

/* ---------------------------------------------------------------------------------------------- */
/* tokenizer: COUNT_TOKEN_RE = [^\S\n]*(\w+(?:['’-]\w+)*|(?:[^\w\s'’-]|\n)\W*)  after _ -> space   */
/* findall: at each position skip spaces (not line breaks); then a word, or a break (one character
 * that is neither word, space nor joiner, or a line break, plus every non-word character after
 * it). When neither can start (a joiner, or the end), the match fails at every position up to and
 * including that joiner, so scanning resumes just after it.                                        */

static inline int is_joiner(U c) { return c == '\'' || c == 0x2019 || c == '-'; }
/* ASCII classes for the tokenizer, one lookup per character ('_' is a space here) */
enum { C_OTHER = 0, C_WORD = 1, C_SPACE = 2, C_JOINER = 3 };
static unsigned char tok_class[128];
static inline int tok_space(U c) {
    if (c < 128) return tok_class[c] == C_SPACE;
    return is_space(c);
}
static inline int tok_word(U c) {
    if (c < 128) return tok_class[c] == C_WORD;
    return Py_UNICODE_ISALNUM(c);
}
static inline int tok_joiner(U c) { return c < 128 ? tok_class[c] == C_JOINER : c == 0x2019; }

/* calls emit(kind, start, end, ctx) with kind 1 = word, 0 = break */
typedef void (*emit_fn)(int kind, const U *s, Py_ssize_t a, Py_ssize_t b, void *ctx);

static inline __attribute__((always_inline)) void tokenize(const U *s, Py_ssize_t n, emit_fn emit, void *ctx) {
    Py_ssize_t p = 0;
    while (p < n) {
        Py_ssize_t q = p;
        while (q < n && tok_space(s[q])) q++;
        if (q >= n) return;
        U c = s[q];
        if (tok_word(c)) {
            Py_ssize_t e = q + 1;
            while (1) {
                while (e < n && tok_word(s[e])) e++;
                if (e + 1 < n && tok_joiner(s[e]) && tok_word(s[e + 1])) { e += 2; continue; }
                break;
            }
            emit(1, s, q, e, ctx);
            p = e;
        } else if (c == '\n' || !is_joiner(c)) {
            Py_ssize_t e = q + 1;
            while (e < n && !tok_word(s[e])) e++;   /* \W*: '_' is a space here */
            emit(0, s, q, e, ctx);
            p = e;
        } else {
            p = q + 1;
        }
    }
}

/* ---------------------------------------------------------------------------------------------- */
/* counting tables                                                                                 */

/* A word's slot holds 32 bits of its hash and its id; what a word is (where its code points
 * are, how many) and how often it was seen live in arrays indexed by id, in insertion order, so
 * the frequent words, seen first, share cache lines. 8-byte slots: the table stays in cache. */
typedef struct {
    uint32_t hash;
    uint32_t id;        /* EMPTY = free slot */
} WordSlot;
#define EMPTY 0xffffffffu

typedef struct {
    Py_ssize_t start;
    uint32_t len;       /* 0 for a break */
    uint32_t hash;
    uint32_t id;        /* the word's id, EMPTY for a break */
} Tok;

typedef struct {
    int64_t off;        /* start in the arena */
    int64_t count;
    uint32_t len;
} WordInfo;

typedef struct {
    uint64_t key;       /* (id_a + 1) << 32 | (id_b + 1); 0 = empty */
    int64_t count;
} PairSlot;

typedef struct {
    PyObject_HEAD
    WordSlot *w;        /* open addressing, linear probing, load <= 1/2 */
    Py_ssize_t wcap, wlen;
    WordInfo *info;     /* by id */
    Py_ssize_t infocap;
    U *arena;           /* the words' code points, one after the other */
    Py_ssize_t arena_n, arena_cap;
    PairSlot *b;
    Py_ssize_t bcap, blen;
    int64_t words, pairs;     /* word tokens and word pairs counted since the last take() */
    int oom;
    int busy;
    Work work;
    Tok *toks;                /* one page's tokens (count_page) */
    uint64_t *keys;           /* and its word pairs: tokcap keys, then tokcap hashes */
    Py_ssize_t ntok, tokcap;
    /* the XML page scanner (feed/finish): bytes not yet scanned, and page statistics */
    unsigned char *carry;
    Py_ssize_t carry_n, carry_cap;
    int64_t pages, articles, redirects, other_ns;
} CountsObject;

/* FNV-style, two code points per multiply (half the dependency chain of plain FNV-1a) */
static inline uint32_t hash_word(const U *s, Py_ssize_t n) {
    uint64_t h = 1469598103934665603ULL ^ (uint64_t)n;
    Py_ssize_t i = 0;
    for (; i + 2 <= n; i += 2) h = (h ^ (s[i] | ((uint64_t)s[i + 1] << 32))) * 0x100000001b3ULL * 0x9E3779B1ULL;
    if (i < n) h = (h ^ s[i]) * 0x100000001b3ULL;
    h ^= h >> 32;
    h *= 0xd6e8feb86659fd93ULL;
    return (uint32_t)(h ^ (h >> 32));
}

static int words_grow(CountsObject *c) {
    Py_ssize_t cap = c->wcap ? c->wcap * 2 : 1 << 14;
    WordSlot *t = (WordSlot *)table_alloc((size_t)cap * sizeof(WordSlot));
    if (!t) return -1;
    for (Py_ssize_t i = 0; i < cap; i++) t[i].id = EMPTY;
    for (Py_ssize_t i = 0; i < c->wcap; i++) {
        if (c->w[i].id == EMPTY) continue;
        Py_ssize_t s = (Py_ssize_t)(c->w[i].hash & (uint32_t)(cap - 1));
        while (t[s].id != EMPTY) s = (s + 1) & (cap - 1);
        t[s] = c->w[i];
    }
    table_free(c->w, (size_t)c->wcap * sizeof(WordSlot));
    c->w = t;
    c->wcap = cap;
    return 0;
}

static inline int same_word(const U *a, const U *b, Py_ssize_t n) {
    Py_ssize_t i = 0;
#ifdef VEC
    for (; i + 4 <= n; i += 4) {
        __m128i x = _mm_cmpeq_epi32(_mm_loadu_si128((const __m128i *)(a + i)), _mm_loadu_si128((const __m128i *)(b + i)));
        if (_mm_movemask_epi8(x) != 0xffff) return 0;
    }
#endif
    for (; i < n; i++) if (a[i] != b[i]) return 0;
    return 1;
}

/* the info of a word, inserted with count 0 if new (its id in *id); NULL when out of memory */
static WordInfo *word_info(CountsObject *c, const U *s, Py_ssize_t n, uint32_t h, uint32_t *id) {
    if ((c->wlen + 1) * 2 > c->wcap && words_grow(c) < 0) return NULL;
    Py_ssize_t mask = c->wcap - 1;
    for (Py_ssize_t slot = (Py_ssize_t)(h & (uint32_t)mask);; slot = (slot + 1) & mask) {
        WordSlot *e = &c->w[slot];
        if (e->id == EMPTY) {
            if (c->wlen >= 0x7fffffff) return NULL;
            if (c->wlen == c->infocap) {
                Py_ssize_t cap = c->infocap ? c->infocap * 2 : 1 << 13;
                WordInfo *p = (WordInfo *)realloc(c->info, (size_t)cap * sizeof(WordInfo));
                if (!p) return NULL;
                c->info = p;
                c->infocap = cap;
            }
            if (c->arena_n + n > c->arena_cap) {
                Py_ssize_t cap = c->arena_cap ? c->arena_cap * 2 : 1 << 16;
                while (cap < c->arena_n + n) cap *= 2;
                U *a = (U *)realloc(c->arena, (size_t)cap * sizeof(U));
                if (!a) return NULL;
                c->arena = a;
                c->arena_cap = cap;
            }
            memcpy(c->arena + c->arena_n, s, (size_t)n * sizeof(U));
            WordInfo *w = &c->info[c->wlen];
            w->off = c->arena_n;
            w->len = (uint32_t)n;
            w->count = 0;
            e->hash = h;
            e->id = (uint32_t)c->wlen;
            c->arena_n += n;
            c->wlen++;
            *id = e->id;
            return w;
        }
        if (e->hash == h) {
            WordInfo *w = &c->info[e->id];
            if (w->len == (uint32_t)n && same_word(c->arena + w->off, s, n)) { *id = e->id; return w; }
        }
    }
}

/* murmur3's 64-bit finalizer: every bit of both ids reaches the low bits the table uses */
static inline uint64_t pair_hash(uint64_t h) {
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ULL;
    return h ^ (h >> 33);
}

static int pairs_grow(CountsObject *c) {
    Py_ssize_t cap = c->bcap ? c->bcap * 2 : 1 << 14;
    PairSlot *t = (PairSlot *)table_alloc((size_t)cap * sizeof(PairSlot));
    if (!t) return -1;
    for (Py_ssize_t i = 0; i < c->bcap; i++) {
        if (!c->b[i].key) continue;
        Py_ssize_t s = (Py_ssize_t)(pair_hash(c->b[i].key) & (uint64_t)(cap - 1));
        while (t[s].key) s = (s + 1) & (cap - 1);
        t[s] = c->b[i];
    }
    table_free(c->b, (size_t)c->bcap * sizeof(PairSlot));
    c->b = t;
    c->bcap = cap;
    return 0;
}

static int pair_add(CountsObject *c, uint64_t key, uint64_t h) {
    if ((c->blen + 1) * 2 > c->bcap && pairs_grow(c) < 0) return -1;
    Py_ssize_t mask = c->bcap - 1;
    for (Py_ssize_t s = (Py_ssize_t)(h & (uint64_t)mask);; s = (s + 1) & mask) {
        if (c->b[s].key == key) { c->b[s].count++; return 0; }
        if (!c->b[s].key) { c->b[s].key = key; c->b[s].count = 1; c->blen++; return 0; }
    }
}

/* Counting one page in three loops rather than one: (1) tokenize, hashing each word; (2) look
 * every word up; (3) count every pair of neighbouring words. Lookups in a hash table are cache
 * misses, one after the other when done as the tokenizer finds words; with all hashes known in
 * advance, each loop asks the CPU to fetch the slot it will need PREFETCH items later, so the
 * misses overlap. */
#ifndef PREFETCH
#define PREFETCH 16
#endif
/* ... but only once a table outgrows the L2 cache (512 KB): below that, the extra work of the
 * guesses costs more (~5% on the fixture) than the misses they hide */
#define PREFETCH_FROM_SLOTS (1 << 16)

static inline __attribute__((always_inline)) void tok_emit(int kind, const U *s, Py_ssize_t a, Py_ssize_t b, void *ctx) {
    CountsObject *c = (CountsObject *)ctx;
    if (c->oom) return;
    if (c->ntok == c->tokcap) {
        Py_ssize_t cap = c->tokcap ? c->tokcap * 2 : 1 << 14;
        Tok *t = (Tok *)realloc(c->toks, (size_t)cap * sizeof(Tok));
        uint64_t *k = (uint64_t *)realloc(c->keys, (size_t)cap * 2 * sizeof(uint64_t));  /* keys, then hashes */
        if (t) c->toks = t;
        if (k) c->keys = k;
        if (!t || !k) { c->oom = 1; return; }
        c->tokcap = cap;
    }
    Tok *t = &c->toks[c->ntok++];
    t->start = a;
    t->len = kind ? (uint32_t)(b - a) : 0;    /* 0: a break */
    t->hash = kind ? hash_word(s + a, b - a) : 0;
}

static void count_page(CountsObject *c) {
    const U *s = c->work.a.p;
    c->ntok = 0;
    tokenize(s, c->work.a.n, tok_emit, c);
    if (c->oom) return;
    Py_ssize_t m = c->ntok;
    Tok *t = c->toks;
    /* (2) words -> ids (EMPTY for a break) */
    for (Py_ssize_t i = 0; i < m; i++) {
        /* three stages, as a word's lookup touches three places one after the other: its slot
         * (fetched 2*PREFETCH tokens ahead), then the info of the id found in its first slot
         * (PREFETCH ahead), then that word's characters in the arena (PREFETCH/2 ahead). A
         * guess that is wrong (a collision, a table grown since) only costs a useless fetch. */
        if (PREFETCH && c->wcap > PREFETCH_FROM_SLOTS) {
            uint32_t mask = (uint32_t)(c->wcap - 1);
            Py_ssize_t j = i + 2 * PREFETCH;
            if (j < m && t[j].len) __builtin_prefetch(&c->w[t[j].hash & mask]);
            j = i + PREFETCH;
            if (j < m && t[j].len) {
                const WordSlot *e = &c->w[t[j].hash & mask];
                if (e->hash == t[j].hash && e->id != EMPTY) __builtin_prefetch(&c->info[e->id]);
            }
            j = i + PREFETCH / 2;
            if (j < m && t[j].len) {
                const WordSlot *e = &c->w[t[j].hash & mask];
                if (e->hash == t[j].hash && e->id != EMPTY) __builtin_prefetch(c->arena + c->info[e->id].off);
            }
        }
        if (!t[i].len) { t[i].id = EMPTY; continue; }
        uint32_t id;
        WordInfo *e = word_info(c, s + t[i].start, t[i].len, t[i].hash, &id);
        if (!e) { c->oom = 1; return; }
        e->count++;
        t[i].id = id;
        c->words++;
    }
    /* (3) pairs of neighbouring words: their keys and hashes first, then the counting */
    Py_ssize_t np = 0;
    uint64_t *keys = c->keys, *hashes = c->keys + c->tokcap;
    for (Py_ssize_t i = 1; i < m; i++) {
        if (t[i - 1].id == EMPTY || t[i].id == EMPTY) continue;
        keys[np] = ((uint64_t)(t[i - 1].id + 1) << 32) | (uint64_t)(t[i].id + 1);
        hashes[np] = pair_hash(keys[np]);
        np++;
    }
    for (Py_ssize_t i = 0; i < np; i++) {
        if (PREFETCH && i + PREFETCH < np && c->bcap > PREFETCH_FROM_SLOTS / 2)
            __builtin_prefetch(&c->b[hashes[i + PREFETCH] & (uint64_t)(c->bcap - 1)]);
        if (pair_add(c, keys[i], hashes[i]) < 0) { c->oom = 1; return; }
    }
    c->pairs += np;
}

static void counts_free(CountsObject *c) {
    table_free(c->w, (size_t)c->wcap * sizeof(WordSlot)); c->w = NULL; c->wcap = c->wlen = 0;
    free(c->info); c->info = NULL; c->infocap = 0;
    free(c->arena); c->arena = NULL; c->arena_n = c->arena_cap = 0;
    table_free(c->b, (size_t)c->bcap * sizeof(PairSlot)); c->b = NULL; c->bcap = c->blen = 0;
    c->words = c->pairs = 0;
}

/* after take()/spill(): empty, but the tables keep their size, so the next window does not grow
 * them again from small (each doubling rehashes, and fresh pages fault in: ~20% of the counting
 * on a large vocabulary). Their size is bounded by what the spill threshold let in. */
static void counts_reset(CountsObject *c) {
    for (Py_ssize_t i = 0; i < c->wcap; i++) c->w[i].id = EMPTY;
    if (c->b) memset(c->b, 0, (size_t)c->bcap * sizeof(PairSlot));
    c->wlen = c->blen = 0;
    c->arena_n = 0;
    c->words = c->pairs = 0;
}

/* ---------------------------------------------------------------------------------------------- */
/* Python: class Counts                                                                            */

static PyObject *Counts_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kw, "", kwlist)) return NULL;
    CountsObject *c = (CountsObject *)type->tp_alloc(type, 0);
    if (!c) return NULL;
    return (PyObject *)c;
}

static void Counts_dealloc(CountsObject *c) {
    counts_free(c);
    free(c->work.a.p);
    free(c->carry);
    free(c->toks);
    free(c->keys);
    Py_TYPE(c)->tp_free((PyObject *)c);
}

static PyObject *Counts_add(CountsObject *c, PyObject *text) {
    if (!PyUnicode_Check(text)) {
        PyErr_Format(PyExc_TypeError, "add() takes a str, not %.80s", Py_TYPE(text)->tp_name);
        return NULL;
    }
    if (c->busy) {
        PyErr_SetString(PyExc_RuntimeError, "Counts used by two threads at once");
        return NULL;
    }
    c->busy = 1;
    int err = 0;
    Py_INCREF(text);
    Py_BEGIN_ALLOW_THREADS
    if (load_text(&c->work, text) < 0 || strip_work(&c->work) < 0) err = 1;
    else {
        count_page(c);   /* pairs never cross pages */
        err = c->oom;
    }
    Py_END_ALLOW_THREADS
    Py_DECREF(text);
    c->busy = 0;
    if (err) return PyErr_NoMemory();
    return PyLong_FromSsize_t(c->wlen + c->blen);
}

/* take() -> (words: dict[str, int], pairs: dict[tuple[str, str], int], n_words, n_pairs); reset */
static PyObject *Counts_take(CountsObject *c, PyObject *Py_UNUSED(ignored)) {
    PyObject *uni = NULL, *bi = NULL, *strs = NULL, *res = NULL;
    uni = PyDict_New();
    bi = PyDict_New();
    strs = PyList_New(c->wlen);   /* id -> str */
    if (!uni || !bi || !strs) goto done;
    for (Py_ssize_t i = 0; i < c->wlen; i++) {
        WordInfo *e = &c->info[i];
        PyObject *s = PyUnicode_FromKindAndData(PyUnicode_4BYTE_KIND, c->arena + e->off, e->len);
        if (!s) goto done;
        PyList_SET_ITEM(strs, i, s);
        PyObject *v = PyLong_FromLongLong(e->count);
        if (!v || PyDict_SetItem(uni, s, v) < 0) { Py_XDECREF(v); goto done; }
        Py_DECREF(v);
    }
    for (Py_ssize_t i = 0; i < c->bcap; i++) {
        PairSlot *e = &c->b[i];
        if (!e->key) continue;
        PyObject *a = PyList_GET_ITEM(strs, (Py_ssize_t)(e->key >> 32) - 1);
        PyObject *b = PyList_GET_ITEM(strs, (Py_ssize_t)(e->key & 0xffffffffULL) - 1);
        PyObject *k = PyTuple_Pack(2, a, b);
        PyObject *v = PyLong_FromLongLong(e->count);
        if (!k || !v || PyDict_SetItem(bi, k, v) < 0) { Py_XDECREF(k); Py_XDECREF(v); goto done; }
        Py_DECREF(k);
        Py_DECREF(v);
    }
    res = Py_BuildValue("(OOLL)", uni, bi, (long long)c->words, (long long)c->pairs);
    if (res) counts_reset(c);
done:
    Py_XDECREF(uni);
    Py_XDECREF(bi);
    Py_XDECREF(strs);
    return res;
}

/* ---------------------------------------------------------------------------------------------- */
/* spill(partitions): the counts as marshal records, split by partition, without Python objects    */
/*
 * A spill used to go through take(): millions of str, tuple and int objects, then Python loops to
 * split them by partition, then marshal.dump; ~1.5 us per entry, ten times the cost of counting
 * them on a large vocabulary. Here the records are written directly in marshal's format (version
 * 4, without back-references, which marshal.load reads like any other record): a dict is '{', key,
 * value, ..., '0'; a str is 'z' + 1-byte length + ASCII, 'a' + 4-byte length + ASCII, or 'u' +
 * 4-byte length + UTF-8; an int is 'i' + 4 bytes, or 'l' + a digit count + 15-bit digits; a pair is
 * ')' + 2 + its two strs. The partition of a word is crc32(UTF-8) % partitions, zlib's crc32, as
 * queries/counting.py computes it; a pair goes with its first word. tests/test_queries_fast.py
 * checks the records against marshal.dumps of the same dicts.
 */
typedef struct { unsigned char *p; Py_ssize_t n, cap; } Bytes;

static int bytes_reserve(Bytes *b, Py_ssize_t more) {
    if (b->n + more <= b->cap) return 0;
    Py_ssize_t cap = b->cap ? b->cap : 1024;
    while (cap < b->n + more) cap *= 2;
    unsigned char *q = (unsigned char *)realloc(b->p, (size_t)cap);
    if (!q) return -1;
    b->p = q;
    b->cap = cap;
    return 0;
}

static inline void w_le32(unsigned char *q, uint32_t v) {
    q[0] = (unsigned char)v; q[1] = (unsigned char)(v >> 8); q[2] = (unsigned char)(v >> 16); q[3] = (unsigned char)(v >> 24);
}

static int w_str(Bytes *b, const unsigned char *utf8, Py_ssize_t len, int ascii) {
    if (bytes_reserve(b, len + 5) < 0) return -1;
    unsigned char *q = b->p + b->n;
    if (ascii && len < 256) { q[0] = 'z'; q[1] = (unsigned char)len; q += 2; }
    else { q[0] = ascii ? 'a' : 'u'; w_le32(q + 1, (uint32_t)len); q += 5; }
    memcpy(q, utf8, (size_t)len);
    b->n = (q - b->p) + len;
    return 0;
}

static int w_int(Bytes *b, int64_t v) {
    if (bytes_reserve(b, 32) < 0) return -1;
    unsigned char *q = b->p + b->n;
    if (v >= -2147483647LL - 1 && v <= 2147483647LL) {
        q[0] = 'i';
        w_le32(q + 1, (uint32_t)(int32_t)v);
        b->n += 5;
        return 0;
    }
    /* counts are never negative: 'l', number of 15-bit digits, the digits (least significant first) */
    uint64_t u = (uint64_t)v;
    int nd = 0;
    unsigned char *d = q + 5;
    while (u) { d[2 * nd] = (unsigned char)(u & 0xff); d[2 * nd + 1] = (unsigned char)((u >> 8) & 0x7f); u >>= 15; nd++; }
    q[0] = 'l';
    w_le32(q + 1, (uint32_t)nd);
    b->n += 5 + 2 * nd;
    return 0;
}

static uint32_t crc_table[256];
static void crc_init(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc_table[i] = c;
    }
}
static uint32_t crc32_bytes(const unsigned char *p, Py_ssize_t n) {
    uint32_t c = 0xFFFFFFFFu;
    for (Py_ssize_t i = 0; i < n; i++) c = crc_table[(c ^ p[i]) & 0xff] ^ (c >> 8);
    return c ^ 0xFFFFFFFFu;
}

/* UTF-8 of every word, one after the other (surrogates encoded like any code point, as
 * "surrogatepass" does); off[id], len[id] locate them */
static int utf8_words(CountsObject *c, Bytes *out, Py_ssize_t *off, uint32_t *len, unsigned char *ascii) {
    for (Py_ssize_t id = 0; id < c->wlen; id++) {
        const WordInfo *w = &c->info[id];
        if (bytes_reserve(out, (Py_ssize_t)w->len * 4) < 0) return -1;
        unsigned char *q = out->p + out->n, *q0 = q;
        int is_ascii = 1;
        for (uint32_t k = 0; k < w->len; k++) {
            U ch = c->arena[w->off + k];
            if (ch < 0x80) *q++ = (unsigned char)ch;
            else {
                is_ascii = 0;
                if (ch < 0x800) { *q++ = (unsigned char)(0xC0 | (ch >> 6)); }
                else if (ch < 0x10000) { *q++ = (unsigned char)(0xE0 | (ch >> 12)); *q++ = (unsigned char)(0x80 | ((ch >> 6) & 0x3F)); }
                else { *q++ = (unsigned char)(0xF0 | (ch >> 18)); *q++ = (unsigned char)(0x80 | ((ch >> 12) & 0x3F)); *q++ = (unsigned char)(0x80 | ((ch >> 6) & 0x3F)); }
                *q++ = (unsigned char)(0x80 | (ch & 0x3F));
            }
        }
        off[id] = out->n;
        len[id] = (uint32_t)(q - q0);
        ascii[id] = (unsigned char)is_ascii;
        out->n += q - q0;
    }
    return 0;
}

static PyObject *Counts_spill(CountsObject *c, PyObject *arg) {
    Py_ssize_t P = PyLong_AsSsize_t(arg);
    if (P == -1 && PyErr_Occurred()) return NULL;
    if (P < 1 || P > 65536) { PyErr_SetString(PyExc_ValueError, "partitions must be in 1..65536"); return NULL; }
    Py_ssize_t W = c->wlen;
    Bytes utf = {0};
    Bytes *ub = (Bytes *)calloc((size_t)P, sizeof(Bytes)), *bb = (Bytes *)calloc((size_t)P, sizeof(Bytes));
    Py_ssize_t *off = (Py_ssize_t *)malloc((size_t)(W + 1) * sizeof(Py_ssize_t));
    uint32_t *len = (uint32_t *)malloc((size_t)(W + 1) * sizeof(uint32_t));
    uint32_t *part = (uint32_t *)malloc((size_t)(W + 1) * sizeof(uint32_t));
    unsigned char *ascii = (unsigned char *)malloc((size_t)(W + 1));
    PyObject *lu = NULL, *lb = NULL, *res = NULL;
    int err = !ub || !bb || !off || !len || !part || !ascii;
    Py_BEGIN_ALLOW_THREADS
    if (!err) err = utf8_words(c, &utf, off, len, ascii) < 0;
    for (Py_ssize_t id = 0; !err && id < W; id++) {
        part[id] = crc32_bytes(utf.p + off[id], len[id]) % (uint32_t)P;
        Bytes *b = &ub[part[id]];
        if (!b->n && bytes_reserve(b, 1) == 0) b->p[b->n++] = '{';
        err = !b->n || w_str(b, utf.p + off[id], len[id], ascii[id]) < 0 || w_int(b, c->info[id].count) < 0;
    }
    for (Py_ssize_t i = 0; !err && i < c->bcap; i++) {
        const PairSlot *e = &c->b[i];
        if (!e->key) continue;
        Py_ssize_t a = (Py_ssize_t)(e->key >> 32) - 1, z = (Py_ssize_t)(e->key & 0xffffffffULL) - 1;
        Bytes *b = &bb[part[a]];
        if (!b->n && bytes_reserve(b, 1) == 0) b->p[b->n++] = '{';
        if (!b->n || bytes_reserve(b, 2) < 0) { err = 1; break; }
        b->p[b->n++] = ')';
        b->p[b->n++] = 2;
        err = w_str(b, utf.p + off[a], len[a], ascii[a]) < 0 || w_str(b, utf.p + off[z], len[z], ascii[z]) < 0 ||
              w_int(b, e->count) < 0;
    }
    for (Py_ssize_t p = 0; !err && p < P; p++) {
        if (ub[p].n) { if (bytes_reserve(&ub[p], 1) < 0) err = 1; else ub[p].p[ub[p].n++] = '0'; }
        if (bb[p].n) { if (bytes_reserve(&bb[p], 1) < 0) err = 1; else bb[p].p[bb[p].n++] = '0'; }
    }
    Py_END_ALLOW_THREADS
    if (!err) {
        lu = PyList_New(P);
        lb = PyList_New(P);
        for (Py_ssize_t p = 0; lu && lb && p < P; p++) {
            PyObject *x = PyBytes_FromStringAndSize((const char *)ub[p].p, ub[p].n);
            PyObject *y = PyBytes_FromStringAndSize((const char *)bb[p].p, bb[p].n);
            if (!x || !y) { Py_XDECREF(x); Py_XDECREF(y); Py_CLEAR(lu); break; }
            PyList_SET_ITEM(lu, p, x);
            PyList_SET_ITEM(lb, p, y);
        }
        if (lu && lb) res = Py_BuildValue("(OOLL)", lu, lb, (long long)c->words, (long long)c->pairs);
        if (res) counts_reset(c);
    } else {
        PyErr_NoMemory();
    }
    Py_XDECREF(lu);
    Py_XDECREF(lb);
    for (Py_ssize_t p = 0; ub && p < P; p++) free(ub[p].p);
    for (Py_ssize_t p = 0; bb && p < P; p++) free(bb[p].p);
    free(ub); free(bb); free(off); free(len); free(part); free(ascii); free(utf.p);
    return res;
}

static PyObject *Counts_get_distinct(CountsObject *c, void *Py_UNUSED(closure)) {
    return PyLong_FromSsize_t(c->wlen + c->blen);
}


/* ---------------------------------------------------------------------------------------------- */
/* The XML side: pages straight from the decompressed dump bytes, without expat                   */
/*
 * expat + Python callbacks cost a fifth of the bz2 decompression itself, so for the pages the C
 * side reads the bytes directly. It accepts only what MediaWiki writes: between pages nothing but
 * whitespace; inside a page plain tags, attributes in quotes, character data with the five XML
 * entities and numeric references, strict UTF-8, XML characters only. Anything else (a comment,
 * CDATA, an unknown entity, a child element inside <text>, bad UTF-8, ...) raises Unsupported,
 * and queries/counting.py counts the range again with the expat reader, which gives the same
 * counts or the error expat gives. The dump header (<mediawiki>, <siteinfo>, schema version) is
 * always checked by expat (queries/dump.py: body_chunks).
 *
 * Per page, as queries/dump.py's collector: ns (outside <revision>, default 0), whether a
 * <redirect> element is present, and the content of the last <text> element; only articles
 * (ns 0, no redirect) are stripped and counted.
 */

static PyObject *Unsupported;   /* queries._fastcount.Unsupported */

#define SCAN_OK 0
#define SCAN_OOM (-1)
#define SCAN_UNSUPPORTED (-2)
#define SCAN_MORE (-3)      /* the page goes on past the bytes we have */
static __thread const char *scan_why = "";

static inline int xml_space(unsigned char b) { return b == ' ' || b == '\t' || b == '\n' || b == '\r'; }

static inline int xml_char(uint32_t c) {
    return c == 0x9 || c == 0xA || c == 0xD || (c >= 0x20 && c <= 0xD7FF) ||
           (c >= 0xE000 && c <= 0xFFFD) || (c >= 0x10000 && c <= 0x10FFFF);
}

/* character data of <text> -> code points in o: entities decoded, line ends normalised as XML
 * parsers do ("\r\n" and "\r" -> "\n"; a "&#13;" reference stays "\r"). */
static int decode_text(const unsigned char *s, Py_ssize_t n, Buf *o) {
    if (buf_reserve(o, n + 1) < 0) return SCAN_OOM;
    U *out = o->p;
    Py_ssize_t k = 0, i = 0;
    while (i < n) {
#ifdef VEC
        /* 16 plain ASCII bytes at once: none below 0x20 or above 0x7f (signed compare catches
         * both), no '&', no '>' */
        while (i + 16 <= n) {
            __m128i x = _mm_loadu_si128((const __m128i *)(s + i));
            __m128i bad = _mm_or_si128(_mm_cmplt_epi8(x, _mm_set1_epi8(0x20)),
                          _mm_or_si128(_mm_cmpeq_epi8(x, _mm_set1_epi8('&')),
                                       _mm_cmpeq_epi8(x, _mm_set1_epi8('>'))));
            if (_mm_movemask_epi8(bad)) break;
            __m128i z = _mm_setzero_si128();
            __m128i lo = _mm_unpacklo_epi8(x, z), hi = _mm_unpackhi_epi8(x, z);
            _mm_storeu_si128((__m128i *)(out + k), _mm_unpacklo_epi16(lo, z));
            _mm_storeu_si128((__m128i *)(out + k + 4), _mm_unpackhi_epi16(lo, z));
            _mm_storeu_si128((__m128i *)(out + k + 8), _mm_unpacklo_epi16(hi, z));
            _mm_storeu_si128((__m128i *)(out + k + 12), _mm_unpackhi_epi16(hi, z));
            i += 16;
            k += 16;
        }
        if (i >= n) break;
#endif
        unsigned char b = s[i];
        if (b >= 0x20 && b < 0x80 && b != '&' && b != '>') { out[k++] = b; i++; continue; }
        if (b == '&') {
            Py_ssize_t j = i + 1;
            uint32_t cp;
            if (j < n && s[j] == '#') {
                uint64_t num = 0;
                j++;
                Py_ssize_t d0 = j;
                if (j < n && s[j] == 'x') {
                    d0 = ++j;
                    while (j < n && hexval(s[j]) >= 0) { if (num <= 0x10FFFF) num = num * 16 + (uint64_t)hexval(s[j]); j++; }
                } else {
                    while (j < n && s[j] >= '0' && s[j] <= '9') { if (num <= 0x10FFFF) num = num * 10 + (s[j] - '0'); j++; }
                }
                if (j == d0 || j >= n || s[j] != ';' || num > 0x10FFFF || !xml_char((uint32_t)num)) {
                    scan_why = "a character reference expat would reject";
                    return SCAN_UNSUPPORTED;
                }
                cp = (uint32_t)num;
                j++;
            } else {
                /* the five predefined entities */
                Py_ssize_t left = n - j;
                const unsigned char *q = s + j;
                if (left >= 3 && q[1] == 't' && q[2] == ';' && (q[0] == 'l' || q[0] == 'g')) {
                    cp = q[0] == 'l' ? '<' : '>';
                    j += 3;
                } else if (left >= 4 && !memcmp(q, "amp;", 4)) { cp = '&'; j += 4; }
                else if (left >= 5 && !memcmp(q, "quot;", 5)) { cp = '"'; j += 5; }
                else if (left >= 5 && !memcmp(q, "apos;", 5)) { cp = '\''; j += 5; }
                else { scan_why = "an entity other than the five XML ones"; return SCAN_UNSUPPORTED; }
            }
            out[k++] = cp;
            i = j;
            continue;
        }
        if (b == '>') {
            if (i >= 2 && s[i - 1] == ']' && s[i - 2] == ']') { scan_why = "']]>' in character data"; return SCAN_UNSUPPORTED; }
            out[k++] = '>';
            i++;
            continue;
        }
        if (b == '\r') {
            out[k++] = '\n';
            i += (i + 1 < n && s[i + 1] == '\n') ? 2 : 1;
            continue;
        }
        if (b < 0x20) {
            if (b != '\t' && b != '\n') { scan_why = "a control character"; return SCAN_UNSUPPORTED; }
            out[k++] = b;
            i++;
            continue;
        }
        /* strict UTF-8: no overlong forms, no surrogates, nothing above U+10FFFF */
        uint32_t cp;
        int len;
        if (b >= 0xC2 && b <= 0xDF) { cp = b & 0x1F; len = 2; }
        else if (b >= 0xE0 && b <= 0xEF) { cp = b & 0x0F; len = 3; }
        else if (b >= 0xF0 && b <= 0xF4) { cp = b & 0x07; len = 4; }
        else { scan_why = "invalid UTF-8"; return SCAN_UNSUPPORTED; }
        if (i + len > n) { scan_why = "invalid UTF-8"; return SCAN_UNSUPPORTED; }
        for (int t = 1; t < len; t++) {
            unsigned char cb = s[i + t];
            if ((cb & 0xC0) != 0x80) { scan_why = "invalid UTF-8"; return SCAN_UNSUPPORTED; }
            cp = (cp << 6) | (cb & 0x3F);
        }
        if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10FFFF)) ||
            !xml_char(cp)) {
            scan_why = "invalid UTF-8 or a non-XML character";
            return SCAN_UNSUPPORTED;
        }
        out[k++] = cp;
        i += len;
    }
    o->n = k;
    return SCAN_OK;
}

static inline int name_is(const unsigned char *p, Py_ssize_t len, const char *name) {
    return (Py_ssize_t)strlen(name) == len && !memcmp(p, name, (size_t)len);
}
static inline int name_char(unsigned char b) {
    return (b >= 'a' && b <= 'z') || (b >= 'A' && b <= 'Z') || (b >= '0' && b <= '9') ||
           b == '_' || b == ':' || b == '-' || b == '.';
}

/* end of the tag that starts at s[i] == '<' (index of its '>'), skipping quoted attribute values */
static Py_ssize_t tag_end(const unsigned char *s, Py_ssize_t n, Py_ssize_t i) {
    for (Py_ssize_t j = i + 1; j < n; j++) {
        unsigned char b = s[j];
        if (b == '>') return j;
        if (b == '<') return -1;
        if (b == '"' || b == '\'') {
            const unsigned char *q = memchr(s + j + 1, b, (size_t)(n - j - 1));
            if (!q) return -2;
            j = q - s;
        }
    }
    return -2;   /* the bytes end inside the tag */
}

/* One <page>: s points just after "<page>", n bytes are available. The tags are read up to
 * "</page>" (*used = bytes up to and including it); SCAN_MORE when the bytes end first (nothing
 * has been counted then: the page is read again once more bytes came). */
static int scan_page(CountsObject *c, const unsigned char *s, Py_ssize_t n, Py_ssize_t *used) {
    int64_t ns = 0;
    int redirect = 0, in_rev = 0;
    Py_ssize_t text_a = -1, text_b = -1;
    Py_ssize_t i = 0;
    while (1) {
        const unsigned char *lt = memchr(s + i, '<', (size_t)(n - i));
        if (!lt) return SCAN_MORE;
        i = lt - s;
        if (i + 1 >= n) return SCAN_MORE;
        int closing = s[i + 1] == '/';
        Py_ssize_t a = i + 1 + closing, b = a;
        while (b < n && name_char(s[b])) b++;
        if (b >= n) return SCAN_MORE;
        if (b == a) { scan_why = "markup other than plain elements (comment, CDATA, ...)"; return SCAN_UNSUPPORTED; }
        Py_ssize_t gt = tag_end(s, n, i);
        if (gt == -2) return SCAN_MORE;
        if (gt < 0) { scan_why = "a '<' inside a tag"; return SCAN_UNSUPPORTED; }
        int empty = !closing && s[gt - 1] == '/';
        const unsigned char *name = s + a;
        Py_ssize_t L = b - a;
        i = gt + 1;
        if (closing) {
            if (name_is(name, L, "revision")) in_rev = 0;
            else if (name_is(name, L, "page")) { *used = i; break; }
            continue;
        }
        if (name_is(name, L, "page")) { scan_why = "a <page> inside a page"; return SCAN_UNSUPPORTED; }
        if (name_is(name, L, "revision")) { if (!empty) in_rev = 1; continue; }
        if (name_is(name, L, "redirect")) { redirect = 1; continue; }
        if (name_is(name, L, "text")) {
            if (empty) { text_a = text_b = i; continue; }
            const unsigned char *e = memchr(s + i, '<', (size_t)(n - i));
            if (!e || e + 6 > s + n) return SCAN_MORE;
            if (memcmp(e, "</text", 6) != 0) {
                scan_why = "an element inside <text>";
                return SCAN_UNSUPPORTED;
            }
            text_a = i;
            text_b = e - s;
            i = text_b;
            continue;
        }
        if (name_is(name, L, "ns") && !in_rev && empty) { scan_why = "an empty <ns/>"; return SCAN_UNSUPPORTED; }
        if (name_is(name, L, "ns") && !in_rev) {
            /* int(value): optional spaces and sign, ASCII digits (anything else: expat's path) */
            Py_ssize_t p = i;
            while (p < n && xml_space(s[p])) p++;
            int neg = 0;
            if (p < n && (s[p] == '-' || s[p] == '+')) neg = s[p++] == '-';
            Py_ssize_t d0 = p;
            int64_t v = 0;
            while (p < n && s[p] >= '0' && s[p] <= '9' && p - d0 < 12) v = v * 10 + (s[p++] - '0');
            Py_ssize_t d1 = p;
            while (p < n && xml_space(s[p])) p++;
            if (p >= n) return SCAN_MORE;
            if (d1 == d0 || s[p] != '<') { scan_why = "an unusual <ns> value"; return SCAN_UNSUPPORTED; }
            ns = neg ? -v : v;
            i = p;
            continue;
        }
    }
    c->pages++;
    if (ns != 0) { c->other_ns++; return SCAN_OK; }
    if (redirect) { c->redirects++; return SCAN_OK; }
    c->articles++;
    if (text_a < 0) { c->work.a.n = 0; }
    else {
        int r = decode_text(s + text_a, text_b - text_a, &c->work.a);
        if (r) return r;
    }
    if (strip_work(&c->work) < 0) return SCAN_OOM;
    count_page(c);
    return c->oom ? SCAN_OOM : SCAN_OK;
}

static const char PAGE_OPEN[] = "<page>", ROOT_CLOSE[] = "</mediawiki>";

/* scan the complete pages of s[0:n], stopping early once more than `limit` distinct entries are
 * held (the caller spills and calls again); *done = bytes consumed (whole pages and the whitespace
 * around them) */
static int scan_buf(CountsObject *c, const unsigned char *s, Py_ssize_t n, Py_ssize_t limit,
                    Py_ssize_t *done) {
    Py_ssize_t pos = 0;
    int r = SCAN_OK;
    while (1) {
        while (pos < n && xml_space(s[pos])) pos++;
        if (pos >= n) break;
        Py_ssize_t left = n - pos;
        if (left < 6) {
            if (memcmp(s + pos, PAGE_OPEN, (size_t)left) && memcmp(s + pos, ROOT_CLOSE, (size_t)left)) {
                scan_why = "content between pages";
                r = SCAN_UNSUPPORTED;
            }
            break;  /* need more bytes */
        }
        if (memcmp(s + pos, PAGE_OPEN, 6)) {
            if (!memcmp(s + pos, ROOT_CLOSE, (size_t)(left < 12 ? left : 12))) break;  /* finish() */
            scan_why = "content between pages";
            r = SCAN_UNSUPPORTED;
            break;
        }
        Py_ssize_t used = 0;
        r = scan_page(c, s + pos + 6, n - pos - 6, &used);
        if (r == SCAN_MORE) { r = SCAN_OK; break; }  /* need more bytes */
        if (r) break;
        pos += 6 + used;
        if (c->wlen + c->blen > limit) break;
    }
    *done = pos;
    return r;
}

static int carry_append(CountsObject *c, const unsigned char *p, Py_ssize_t len) {
    Py_ssize_t need = c->carry_n + len + 1;
    if (need > c->carry_cap) {
        Py_ssize_t cap = c->carry_cap ? c->carry_cap : 1 << 16;
        while (cap < need) cap *= 2;
        unsigned char *q = (unsigned char *)realloc(c->carry, (size_t)cap);
        if (!q) return SCAN_OOM;
        c->carry = q;
        c->carry_cap = cap;
    }
    memcpy(c->carry + c->carry_n, p, (size_t)len);
    c->carry_n += len;
    return SCAN_OK;
}

/* Pages are scanned where they lie in the caller's chunk; only a page cut by the chunk's end is
 * copied (into `carry`), and completed with the head of the next chunk up to its first "</page>". */
static int feed_bytes(CountsObject *c, const unsigned char *buf, Py_ssize_t n, Py_ssize_t limit) {
    Py_ssize_t done;
    int r;
    if (c->carry_n > 0) {
        const unsigned char *e = memmem(buf, (size_t)n, "</page>", 7);
        Py_ssize_t head = e ? (e - buf) + 7 : n;
        if ((r = carry_append(c, buf, head))) return r;
        buf += head;
        n -= head;
        if ((r = scan_buf(c, c->carry, c->carry_n, limit, &done))) return r;
        memmove(c->carry, c->carry + done, (size_t)(c->carry_n - done));
        c->carry_n -= done;
        if (c->carry_n > 0)   /* stopped at the limit, or still no end of page: the rest waits */
            return n ? carry_append(c, buf, n) : SCAN_OK;
    }
    if ((r = scan_buf(c, buf, n, limit, &done))) return r;
    return carry_append(c, buf + done, n - done);
}

static PyObject *scan_error(int r) {
    if (r == SCAN_OOM) return PyErr_NoMemory();
    PyErr_SetString(Unsupported, scan_why);
    return NULL;
}

static PyObject *Counts_feed(CountsObject *c, PyObject *args) {
    Py_buffer view;
    Py_ssize_t limit = PY_SSIZE_T_MAX;
    if (!PyArg_ParseTuple(args, "y*|n", &view, &limit)) return NULL;
    if (c->busy) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_RuntimeError, "Counts used by two threads at once");
        return NULL;
    }
    c->busy = 1;
    int r;
    Py_BEGIN_ALLOW_THREADS
    r = feed_bytes(c, (const unsigned char *)view.buf, view.len, limit);
    Py_END_ALLOW_THREADS
    c->busy = 0;
    PyBuffer_Release(&view);
    if (r) return scan_error(r);
    return PyLong_FromSsize_t(c->wlen + c->blen);
}

/* finish(root_end): what is left must be whitespace, with "</mediawiki>" in it when root_end is
 * 1 (a whole file), or optionally when 0 (a multistream range: only the last one has it). */
static PyObject *Counts_finish(CountsObject *c, PyObject *arg) {
    int root_end = PyObject_IsTrue(arg);
    if (root_end < 0) return NULL;
    const unsigned char *s = c->carry;
    Py_ssize_t n = c->carry_n, pos = 0;
    while (pos < n && xml_space(s[pos])) pos++;
    int seen = 0;
    if (n - pos >= 12 && !memcmp(s + pos, ROOT_CLOSE, 12)) { seen = 1; pos += 12; }
    while (pos < n && xml_space(s[pos])) pos++;
    if (pos < n || (root_end && !seen)) {
        scan_why = pos < n ? "a cut page or content after the pages" : "no </mediawiki> at the end";
        return scan_error(SCAN_UNSUPPORTED);
    }
    c->carry_n = 0;
    return Py_BuildValue("{sLsLsLsL}", "pages", (long long)c->pages, "articles", (long long)c->articles,
                         "redirects", (long long)c->redirects, "other_namespaces", (long long)c->other_ns);
}

/* clear(): as new, but the tables keep their capacity, so a worker that counts one range after
 * another does not grow them again from small for each range (each doubling rehashes, and fresh
 * pages fault in). */
static PyObject *Counts_clear(CountsObject *c, PyObject *Py_UNUSED(ignored)) {
    if (c->busy) {
        PyErr_SetString(PyExc_RuntimeError, "Counts used by two threads at once");
        return NULL;
    }
    if (c->w) counts_reset(c);
    else c->words = c->pairs = 0;
    c->carry_n = 0;
    c->ntok = 0;
    c->oom = 0;
    c->pages = c->articles = c->redirects = c->other_ns = 0;
    Py_RETURN_NONE;
}

static PyMethodDef Counts_methods[] = {
    {"clear", (PyCFunction)Counts_clear, METH_NOARGS,
     "clear(): forget all counts, page statistics and unread bytes; the tables keep their capacity."},
    {"add", (PyCFunction)Counts_add, METH_O,
     "add(text) -> distinct entries: strip one page's wikitext, tokenize it, count its words and "
     "word pairs (as queries.wikitext.strip_markup + count_tokens + Counter.update)."},
    {"feed", (PyCFunction)Counts_feed, METH_VARARGS,
     "feed(xml_bytes, limit=inf) -> distinct entries: count the articles of the complete <page>s so "
     "far (the bytes after the dump header), stopping once more than `limit` distinct entries are "
     "held (spill, then feed(b'') goes on); raises Unsupported for XML only expat should read."},
    {"finish", (PyCFunction)Counts_finish, METH_O,
     "finish(root_end) -> page statistics, after checking that nothing but </mediawiki> is left."},
    {"spill", (PyCFunction)Counts_spill, METH_O,
     "spill(partitions) -> (words, pairs, n_words, n_pairs): for each partition, the bytes of one "
     "marshal record (a dict, b'' when empty) of its words and of its pairs; then reset."},
    {"take", (PyCFunction)Counts_take, METH_NOARGS,
     "take() -> (words, pairs, n_words, n_pairs): the counts as dicts (breaks left out), then reset."},
    {NULL}};

static PyGetSetDef Counts_getset[] = {
    {"distinct", (getter)Counts_get_distinct, NULL, "distinct words + distinct pairs held", NULL},
    {NULL}};

static PyTypeObject CountsType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "clipcurate.queries." STR(FASTCOUNT_MODNAME) ".Counts",
    .tp_basicsize = sizeof(CountsObject),
    .tp_dealloc = (destructor)Counts_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Word and word-pair counts of wikitext pages (see queries/fastcount.py).",
    .tp_methods = Counts_methods,
    .tp_getset = Counts_getset,
    .tp_new = Counts_new,
};

/* ---------------------------------------------------------------------------------------------- */
/* module functions: the steps one by one, for the tests                                           */

static PyObject *work_to_str(Work *w) {
    return PyUnicode_FromKindAndData(PyUnicode_4BYTE_KIND, w->a.p, w->a.n);
}

static PyObject *mod_strip_markup(PyObject *self, PyObject *text) {
    if (!PyUnicode_Check(text)) {
        PyErr_SetString(PyExc_TypeError, "strip_markup() takes a str");
        return NULL;
    }
    Work w = {{0}};
    PyObject *res = NULL;
    if (load_text(&w, text) < 0 || strip_work(&w) < 0) PyErr_NoMemory();
    else res = work_to_str(&w);
    free(w.a.p);
    return res;
}

typedef struct { PyObject *list; int err; } TokCtx;

static void list_emit(int kind, const U *s, Py_ssize_t a, Py_ssize_t b, void *ctx) {
    TokCtx *t = (TokCtx *)ctx;
    if (t->err) return;
    /* the regex returns breaks as written; '_' was turned into a space before it ran */
    U *tmp = (U *)malloc((size_t)(b - a + 1) * sizeof(U));
    if (!tmp) { t->err = 1; return; }
    for (Py_ssize_t i = a; i < b; i++) tmp[i - a] = s[i] == '_' ? ' ' : s[i];
    PyObject *o = PyUnicode_FromKindAndData(PyUnicode_4BYTE_KIND, tmp, b - a);
    free(tmp);
    if (!o || PyList_Append(t->list, o) < 0) t->err = 1;
    Py_XDECREF(o);
    (void)kind;
}

static PyObject *mod_count_tokens(PyObject *self, PyObject *text) {
    if (!PyUnicode_Check(text)) {
        PyErr_SetString(PyExc_TypeError, "count_tokens() takes a str");
        return NULL;
    }
    Work w = {{0}};
    TokCtx t = {PyList_New(0), 0};
    if (!t.list) return NULL;
    if (load_text(&w, text) < 0) t.err = 1;
    else tokenize(w.a.p, w.a.n, list_emit, &t);
    free(w.a.p);
    if (t.err) {
        Py_DECREF(t.list);
        if (!PyErr_Occurred()) PyErr_NoMemory();
        return NULL;
    }
    return t.list;
}

/* _init(html5: dict[str, str], invalid_charrefs: dict[int, str], invalid_codepoints: set[int]) */
static PyObject *mod_init(PyObject *self, PyObject *args) {
    PyObject *html5, *charrefs, *codepoints;
    if (!PyArg_ParseTuple(args, "O!O!O", &PyDict_Type, &html5, &PyDict_Type, &charrefs, &codepoints))
        return NULL;
    Py_ssize_t n = PyDict_Size(html5), cap = 1;
    while (cap < 2 * n + 2) cap *= 2;
    Entity *tab = (Entity *)calloc((size_t)cap, sizeof(Entity));
    if (!tab) return PyErr_NoMemory();
    PyObject *k, *v;
    Py_ssize_t pos = 0;
    while (PyDict_Next(html5, &pos, &k, &v)) {
        Py_ssize_t kl;
        const char *ks = PyUnicode_AsUTF8AndSize(k, &kl);
        if (!ks) { free(tab); return NULL; }
        Py_ssize_t vl = PyUnicode_GET_LENGTH(v);
        if (kl <= 0 || kl >= 40 || vl > 2) {
            free(tab);
            PyErr_Format(PyExc_ValueError, "entity %R does not fit the table", k);
            return NULL;
        }
        uint64_t h = fnv_bytes(ks, kl);
        Py_ssize_t s = (Py_ssize_t)(h & (uint64_t)(cap - 1));
        while (tab[s].name[0]) s = (s + 1) & (cap - 1);
        memcpy(tab[s].name, ks, (size_t)kl);
        tab[s].nval = (int)vl;
        for (Py_ssize_t i = 0; i < vl; i++) tab[s].val[i] = PyUnicode_READ_CHAR(v, i);
    }
    free(ent_tab);
    ent_tab = tab;
    ent_cap = cap;

    memset(invalid_charref_set, 0, sizeof invalid_charref_set);
    pos = 0;
    while (PyDict_Next(charrefs, &pos, &k, &v)) {
        long num = PyLong_AsLong(k);
        if (num < 0 || num >= 160 || PyUnicode_GET_LENGTH(v) != 1) {
            if (!PyErr_Occurred()) PyErr_Format(PyExc_ValueError, "charref %R does not fit the table", k);
            return NULL;
        }
        invalid_charref[num] = PyUnicode_READ_CHAR(v, 0);
        invalid_charref_set[num] = 1;
    }

    PyObject *sorted = PySequence_List(codepoints);
    if (!sorted || PyList_Sort(sorted) < 0) { Py_XDECREF(sorted); return NULL; }
    Py_ssize_t m = PyList_GET_SIZE(sorted);
    U *cp = (U *)malloc((size_t)(m + 1) * sizeof(U));
    if (!cp) { Py_DECREF(sorted); return PyErr_NoMemory(); }
    for (Py_ssize_t i = 0; i < m; i++) cp[i] = (U)PyLong_AsUnsignedLong(PyList_GET_ITEM(sorted, i));
    Py_DECREF(sorted);
    if (PyErr_Occurred()) { free(cp); return NULL; }
    free(invalid_cp);
    invalid_cp = cp;
    n_invalid_cp = m;
    Py_RETURN_NONE;
}

/* ---------------------------------------------------------------------------------------------- */
/* merge_records(data, min_count): the merge of one partition, without a Python object per entry   */
/*
 * Merging the spilled counts used to load every record into Python dicts and sum them there; most
 * entries (bigrams seen once) are then thrown away by the min_count filter, after costing an object
 * each. Here the records that Counts.spill wrote (the subset of marshal above: 'z'/'a'/'u' strings,
 * ')' pairs, 'i'/'l' ints, no back-references) are parsed in place: a key is identified by its
 * encoded bytes (the writer encodes a given string one way only), counts are summed in a hash
 * table, and only the entries that reach min_count become Python objects. Anything else (records
 * from the pure-Python path, whose marshal.dump uses references) raises Unsupported, and
 * queries/counting.py merges that partition the Python way.
 */
typedef struct { Py_ssize_t off; uint32_t len; uint32_t hash; int64_t count; } MergeSlot;

static int m_str(const unsigned char *d, Py_ssize_t n, Py_ssize_t *i) {
    if (*i >= n) return -1;
    unsigned char t = d[*i];
    Py_ssize_t len;
    if (t == 'z') {
        if (*i + 2 > n) return -1;
        len = d[*i + 1];
        *i += 2;
    } else if (t == 'a' || t == 'u') {
        if (*i + 5 > n) return -1;
        len = (Py_ssize_t)((uint32_t)d[*i + 1] | (uint32_t)d[*i + 2] << 8 | (uint32_t)d[*i + 3] << 16 | (uint32_t)d[*i + 4] << 24);
        *i += 5;
    } else return -1;
    if (len < 0 || *i + len > n) return -1;
    *i += len;
    return 0;
}

static int m_int(const unsigned char *d, Py_ssize_t n, Py_ssize_t *i, int64_t *v) {
    if (*i >= n) return -1;
    if (d[*i] == 'i') {
        if (*i + 5 > n) return -1;
        *v = (int32_t)((uint32_t)d[*i + 1] | (uint32_t)d[*i + 2] << 8 | (uint32_t)d[*i + 3] << 16 | (uint32_t)d[*i + 4] << 24);
        *i += 5;
        return 0;
    }
    if (d[*i] == 'l') {
        if (*i + 5 > n) return -1;
        int32_t nd = (int32_t)((uint32_t)d[*i + 1] | (uint32_t)d[*i + 2] << 8 | (uint32_t)d[*i + 3] << 16 | (uint32_t)d[*i + 4] << 24);
        if (nd <= 0 || nd > 4 || *i + 5 + 2 * nd > n) return -1;   /* positive and < 2**60 */
        uint64_t u = 0;
        for (int k = nd - 1; k >= 0; k--) u = (u << 15) | ((uint64_t)d[*i + 5 + 2 * k] | (uint64_t)(d[*i + 6 + 2 * k] & 0x7f) << 8);
        *v = (int64_t)u;
        *i += 5 + 2 * nd;
        return 0;
    }
    return -1;
}

static PyObject *m_decode_str(const unsigned char *d, Py_ssize_t *i) {
    unsigned char t = d[*i];
    Py_ssize_t len;
    if (t == 'z') { len = d[*i + 1]; *i += 2; }
    else { len = (Py_ssize_t)((uint32_t)d[*i + 1] | (uint32_t)d[*i + 2] << 8 | (uint32_t)d[*i + 3] << 16 | (uint32_t)d[*i + 4] << 24); *i += 5; }
    PyObject *o = t == 'u' ? PyUnicode_DecodeUTF8((const char *)d + *i, len, "surrogatepass")
                           : PyUnicode_DecodeASCII((const char *)d + *i, len, NULL);
    *i += len;
    return o;
}

static PyObject *mod_merge_records(PyObject *self, PyObject *args) {
    Py_buffer view;
    long long min_count;
    if (!PyArg_ParseTuple(args, "y*L", &view, &min_count)) return NULL;
    const unsigned char *d = (const unsigned char *)view.buf;
    Py_ssize_t n = view.len, i = 0, cap = 1 << 12, used = 0;
    int64_t total = 0;
    int bad = 0, oom = 0;
    MergeSlot *t = (MergeSlot *)calloc((size_t)cap, sizeof(MergeSlot));
    if (!t) { PyBuffer_Release(&view); return PyErr_NoMemory(); }
    Py_BEGIN_ALLOW_THREADS
    while (i < n && !bad && !oom) {
        if (d[i++] != '{') { bad = 1; break; }
        while (1) {
            if (i >= n) { bad = 1; break; }
            if (d[i] == '0') { i++; break; }
            Py_ssize_t k0 = i;
            if (d[i] == ')') {
                if (i + 2 > n || d[i + 1] != 2) { bad = 1; break; }
                i += 2;
                if (m_str(d, n, &i) < 0 || m_str(d, n, &i) < 0) { bad = 1; break; }
            } else if (m_str(d, n, &i) < 0) { bad = 1; break; }
            Py_ssize_t klen = i - k0;
            int64_t v;
            if (m_int(d, n, &i, &v) < 0) { bad = 1; break; }
            total += v;
            if ((used + 1) * 2 > cap) {   /* grow */
                Py_ssize_t nc = cap * 2;
                MergeSlot *nt = (MergeSlot *)calloc((size_t)nc, sizeof(MergeSlot));
                if (!nt) { oom = 1; break; }
                for (Py_ssize_t q = 0; q < cap; q++) {
                    if (!t[q].len) continue;
                    Py_ssize_t sl = t[q].hash & (nc - 1);
                    while (nt[sl].len) sl = (sl + 1) & (nc - 1);
                    nt[sl] = t[q];
                }
                free(t);
                t = nt;
                cap = nc;
            }
            uint32_t h = crc32_bytes(d + k0, klen) | 1u;
            Py_ssize_t sl = h & (cap - 1);
            while (t[sl].len && !(t[sl].hash == h && t[sl].len == (uint32_t)klen && !memcmp(d + t[sl].off, d + k0, (size_t)klen)))
                sl = (sl + 1) & (cap - 1);
            if (!t[sl].len) { t[sl].off = k0; t[sl].len = (uint32_t)klen; t[sl].hash = h; used++; }
            t[sl].count += v;
        }
    }
    Py_END_ALLOW_THREADS
    PyObject *out = NULL;
    if (oom) PyErr_NoMemory();
    else if (bad) PyErr_SetString(Unsupported, "not a record of Counts.spill");
    else if ((out = PyDict_New())) {
        for (Py_ssize_t q = 0; q < cap; q++) {
            if (!t[q].len || t[q].count < min_count) continue;
            Py_ssize_t j = t[q].off;
            PyObject *key;
            if (d[j] == ')') {
                j += 2;
                PyObject *a = m_decode_str(d, &j);
                PyObject *b = a ? m_decode_str(d, &j) : NULL;
                key = b ? PyTuple_Pack(2, a, b) : NULL;
                Py_XDECREF(a);
                Py_XDECREF(b);
            } else key = m_decode_str(d, &j);
            PyObject *val = key ? PyLong_FromLongLong(t[q].count) : NULL;
            if (!val || PyDict_SetItem(out, key, val) < 0) { Py_XDECREF(key); Py_XDECREF(val); Py_CLEAR(out); break; }
            Py_DECREF(key);
            Py_DECREF(val);
        }
    }
    free(t);
    PyBuffer_Release(&view);
    if (!out) return NULL;
    PyObject *res = Py_BuildValue("(NL)", out, (long long)total);
    return res;
}

/* cpu_has_avx2() -> bool: may queries._fastcount_avx2 run here? */
static PyObject *mod_cpu_has_avx2(PyObject *self, PyObject *Py_UNUSED(ignored)) {
#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
    __builtin_cpu_init();
    return PyBool_FromLong(__builtin_cpu_supports("avx2"));
#else
    Py_RETURN_FALSE;
#endif
}

static PyMethodDef module_methods[] = {
    {"merge_records", mod_merge_records, METH_VARARGS,
     "merge_records(data, min_count) -> (dict of the entries with count >= min_count, sum of all counts): "
     "the Counts.spill records in data, summed; raises Unsupported for other marshal data."},
    {"cpu_has_avx2", mod_cpu_has_avx2, METH_NOARGS, "cpu_has_avx2() -> bool: can the AVX2 build run on this CPU?"},
    {"strip_markup", mod_strip_markup, METH_O, "strip_markup(text) -> plain text (as queries.wikitext.strip_markup)."},
    {"count_tokens", mod_count_tokens, METH_O, "count_tokens(text) -> tokens (as queries.wikitext.count_tokens)."},
    {"_init", mod_init, METH_VARARGS, "_init(html5, invalid_charrefs, invalid_codepoints): html.unescape's tables."},
    {NULL}};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT, STR(FASTCOUNT_MODNAME),
    "The hot loop of `queries build` in C: strip wiki markup, tokenize, count words and word pairs.",
    -1, module_methods};

PyMODINIT_FUNC CAT(PyInit_, FASTCOUNT_MODNAME)(void) {
    for (int c = 0; c < 128; c++) {
        ascii_word[c] = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
        tok_class[c] = ascii_word[c] ? C_WORD : (c == '_' || (c != '\n' && is_space((U)c))) ? C_SPACE
                       : (c == '\'' || c == '-') ? C_JOINER : C_OTHER;
    }
    crc_init();
    if (PyType_Ready(&CountsType) < 0) return NULL;
    PyObject *m = PyModule_Create(&moduledef);
    if (!m) return NULL;
    Unsupported = PyErr_NewException("clipcurate.queries." STR(FASTCOUNT_MODNAME) ".Unsupported", NULL, NULL);
    if (!Unsupported || PyModule_AddObject(m, "Unsupported", Unsupported) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(Unsupported);
    Py_INCREF(&CountsType);
    if (PyModule_AddObject(m, "Counts", (PyObject *)&CountsType) < 0) {
        Py_DECREF(&CountsType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
