/*
 * main.c: the integration test runner. One PostgreSQL for the whole run;
 * each test gets its own database and Redis (see harness.h).
 */
#include "harness.h"
#include "tt.h"

int main(int argc, char **argv) {
    return tt_main(argc, argv, h_setup, h_teardown);
}
