/* The libraries' implementation, compiled once and linked into dtnh-train and dtnh-eval. */
#define DTNH_IMPLEMENTATION
#include "../dtnh.h"
#include "../dtnh_nn.h"
