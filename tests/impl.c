/* The one translation unit that holds the libraries' implementation for the tests. */
#define DTNH_IMPLEMENTATION
#include "../dtnh.h"
#include "../dtnh_nn.h"
