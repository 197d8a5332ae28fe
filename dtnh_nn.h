/* dtnh_nn.h - v0.1 - public domain (or MIT) - networks for dtnh: layers, ResNet-18,
   regularizers, safetensors weights and data readers

   Built on dtnh.h (include it first, or let this file include it).

   DO THIS
      #define DTNH_IMPLEMENTATION
      #include "dtnh.h"
      #include "dtnh_nn.h"
   in exactly one C or C++ file; every other file includes both as plain headers.

   LICENSE: see the end of the file.
*/
#ifndef DTNH_NN_H
#define DTNH_NN_H

#include "dtnh.h"

#ifdef __cplusplus
extern "C" {
#endif

#include "parts/nn_api.h"
#include "parts/st_api.h"
#include "parts/reg_api.h"
#include "parts/data_api.h"
#include "parts/ckpt_api.h"

#ifdef __cplusplus
}
#endif

#endif /* DTNH_NN_H */

#ifdef DTNH_IMPLEMENTATION
#ifndef DTNH_NN__IMPLEMENTED
#define DTNH_NN__IMPLEMENTED

#include <math.h>
#include <string.h>

#include "parts/nn_impl.h"
#include "parts/st_impl.h"
#include "parts/reg_impl.h"
#include "parts/data_impl.h"
#include "parts/ckpt_impl.h"

#endif /* DTNH_NN__IMPLEMENTED */
#endif /* DTNH_IMPLEMENTATION */

/*
------------------------------------------------------------------------------
This software is available under 2 licenses -- choose whichever you prefer.
------------------------------------------------------------------------------
ALTERNATIVE A - MIT License
Copyright (c) 2026 the dtnh authors
Permission is hereby granted, free of charge, to any person obtaining a copy of
this software and associated documentation files (the "Software"), to deal in
the Software without restriction, including without limitation the rights to
use, copy, modify, merge, publish, distribute, sublicense, and/or sell copies
of the Software, and to permit persons to whom the Software is furnished to do
so, subject to the following conditions:
The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.
THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
------------------------------------------------------------------------------
ALTERNATIVE B - Public Domain (www.unlicense.org)
This is free and unencumbered software released into the public domain.
Anyone is free to copy, modify, publish, use, compile, sell, or distribute this
software, either in source code form or as a compiled binary, for any purpose,
commercial or non-commercial, and by any means.
------------------------------------------------------------------------------
*/
