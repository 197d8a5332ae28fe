/* Every test suite, one line each: SUITE(topic) calls suite_topic() in tests/test_topic.c. */
SUITE(core)
SUITE(cli)
SUITE(gemm)
SUITE(conv)
SUITE(safetensors)
SUITE(optim)
SUITE(dtnh)
