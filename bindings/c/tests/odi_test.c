/* libodi from C: a verified download through a directory whose relay holds a rotten copy, a
 * manifest that finds a bad chunk, an embedded relay started and stopped, and clear errors.
 *
 * usage: odi_test DIRECTORY_URL URL_PATH EXPECTED_SHA256 ENROLL_TOKEN WORKDIR
 * (bindings/c/run-tests starts the network and runs this under valgrind). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "odi.h"

static int failures = 0;

#define CHECK(cond, ...)                                                                     \
    do {                                                                                     \
        if (!(cond)) {                                                                       \
            fprintf(stderr, "%s:%d: check failed: %s: ", __FILE__, __LINE__, #cond);         \
            fprintf(stderr, __VA_ARGS__);                                                    \
            fprintf(stderr, "\n");                                                           \
            failures++;                                                                      \
        }                                                                                    \
    } while (0)

static void write_file(const char *path, size_t len, unsigned seed) {
    FILE *f = fopen(path, "wb");
    if (!f) {
        perror(path);
        exit(2);
    }
    unsigned x = seed * 2654435761u | 1;
    for (size_t i = 0; i < len; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        fputc((int)(x & 0xff), f);
    }
    fclose(f);
}

static void flip_byte(const char *path, long offset) {
    FILE *f = fopen(path, "r+b");
    if (!f) {
        perror(path);
        exit(2);
    }
    fseek(f, offset, SEEK_SET);
    int c = fgetc(f);
    fseek(f, offset, SEEK_SET);
    fputc(c ^ 0xff, f);
    fclose(f);
}

int main(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: %s DIRECTORY_URL URL_PATH EXPECTED_SHA256 ENROLL_TOKEN WORKDIR\n", argv[0]);
        return 2;
    }
    const char *directory = argv[1], *url_path = argv[2], *expected = argv[3], *token = argv[4], *work = argv[5];
    char url[1024], out[1024], sample[1024], missing[1024], relay_dir[1024];
    snprintf(url, sizeof url, "%s%s", directory, url_path);
    snprintf(out, sizeof out, "%s/c-download.bin", work);
    snprintf(sample, sizeof sample, "%s/c-sample.bin", work);
    snprintf(missing, sizeof missing, "%s/no-such-file", work);
    snprintf(relay_dir, sizeof relay_dir, "%s/c-relay", work);

    /* A verified download through the directory: the right bytes though one relay rots. */
    for (int i = 0; i < 3; i++) {
        odi_report report;
        odi_status st = odi_get(url, out, 0, &report);
        CHECK(st == ODI_OK, "odi_get %s: %d %s", url, st, odi_last_error_message());
        if (st == ODI_OK) {
            CHECK(strcmp(report.sha256, expected) == 0, "got %s, expected %s", report.sha256, expected);
            CHECK(report.verified == 1, "a download from a directory is verified");
            CHECK(report.sources >= 1, "sources %u", report.sources);
        }
    }
    /* The file on disk is what the report says: its manifest's digest is the expected one. */
    odi_manifest *m = NULL;
    odi_status st = odi_manifest_of_file(out, 1 << 16, &m);
    CHECK(st == ODI_OK, "odi_manifest_of_file: %s", odi_last_error_message());
    if (m) {
        char hex[65];
        CHECK(odi_manifest_sha256(m, hex) == ODI_OK, "odi_manifest_sha256");
        CHECK(strcmp(hex, expected) == 0, "file on disk has %s, expected %s", hex, expected);
        odi_manifest_free(m);
        m = NULL;
    }

    /* Errors: a status, an unreachable node, bad arguments; each with a one-line message. */
    char nothing[1100];
    snprintf(nothing, sizeof nothing, "%s/r/c/no-such-artifact", directory);
    st = odi_get(nothing, out, 0, NULL);
    CHECK(st == ODI_ERR_STATUS, "404 is ODI_ERR_STATUS, got %d (%s)", st, odi_last_error_message());
    CHECK(strstr(odi_last_error_message(), "404") != NULL, "message names the status: %s", odi_last_error_message());
    CHECK(strchr(odi_last_error_message(), '\n') == NULL, "one line");
    st = odi_get("http://127.0.0.1:1/x", out, 0, NULL);
    CHECK(st == ODI_ERR_NETWORK, "unreachable is ODI_ERR_NETWORK, got %d (%s)", st, odi_last_error_message());
    st = odi_get(NULL, out, 0, NULL);
    CHECK(st == ODI_ERR_INVALID, "NULL url is ODI_ERR_INVALID, got %d", st);
    CHECK(strlen(odi_last_error_message()) > 0, "a message for a NULL argument");

    /* A manifest finds the chunk a flipped byte spoils. */
    write_file(sample, 3 * 65536 + 99, 7);
    st = odi_manifest_of_file(sample, 65536, &m);
    CHECK(st == ODI_OK && m != NULL, "odi_manifest_of_file: %s", odi_last_error_message());
    if (m) {
        CHECK(odi_manifest_size(m) == 3 * 65536 + 99, "size %llu", (unsigned long long)odi_manifest_size(m));
        CHECK(odi_manifest_chunk_count(m) == 4, "chunks %llu", (unsigned long long)odi_manifest_chunk_count(m));
        CHECK(odi_verify_file(m, sample) == ODI_OK, "an intact file verifies: %s", odi_last_error_message());
        flip_byte(sample, 2 * 65536 + 5);
        st = odi_verify_file(m, sample);
        CHECK(st == ODI_ERR_INTEGRITY, "a flipped byte is ODI_ERR_INTEGRITY, got %d", st);
        CHECK(strstr(odi_last_error_message(), "chunk 2") != NULL, "names chunk 2: %s", odi_last_error_message());
        st = odi_verify_file(m, missing);
        CHECK(st == ODI_ERR_FILE, "a missing file is ODI_ERR_FILE, got %d", st);
        odi_manifest_free(m);
    }
    st = odi_manifest_of_file(sample, 100, &m);
    CHECK(st == ODI_ERR_INVALID, "chunk size 100 is ODI_ERR_INVALID, got %d", st);

    /* An embedded relay enrolls, then stops and frees its data directory (it opens again). */
    for (int round = 0; round < 2; round++) {
        odi_relay *relay = NULL;
        st = odi_relay_start(relay_dir, directory, token, "127.0.0.1:0", 1u << 30, &relay);
        CHECK(st == ODI_OK && relay != NULL, "odi_relay_start (round %d): %s", round, odi_last_error_message());
        if (relay) {
            CHECK(strncmp(odi_relay_address(relay), "127.0.0.1:", 10) == 0, "address %s", odi_relay_address(relay));
            st = odi_relay_stop(relay);
            CHECK(st == ODI_OK, "odi_relay_stop: %s", odi_last_error_message());
        }
    }
    odi_relay *bad = NULL;
    st = odi_relay_start(relay_dir, "not-a-url", token, "127.0.0.1:0", 1u << 30, &bad);
    CHECK(st == ODI_ERR_INVALID, "a bad directory URL is ODI_ERR_INVALID, got %d (%s)", st, odi_last_error_message());
    CHECK(odi_relay_stop(NULL) == ODI_ERR_INVALID, "stopping NULL");

    odi_shutdown();
    if (failures) {
        fprintf(stderr, "%d checks failed\n", failures);
        return 1;
    }
    printf("libodi: all checks passed\n");
    return 0;
}
