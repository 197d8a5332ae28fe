/* dtnh_nn.h - v0.1 - public domain (or MIT) - networks for dtnh: layers, ResNet-18,
   transfer regularizers, safetensors weights and checkpoints, data readers

   What fine-tuning on a device needs above the core in dtnh.h: the layers and a ResNet-18
   laid out as torchvision's (so its weights load as they are), trained on two arenas whose
   exact sizes are asked first; the regularizers that tie the model to its source (L2, L2-SP,
   feature maps, DELTA, attention transfer), each writing into g_Omega only, for the DTNH
   step to project; weights and whole training states in safetensors files, saved atomically;
   and readers for IDX, CIFAR-10 and PGM/PPM images with few-shot sampling and augmentation.

   DO THIS
      #define DTNH_IMPLEMENTATION
      #include "dtnh.h"
      #include "dtnh_nn.h"
   in exactly one C or C++ file; every other file includes both as plain headers.

   OPTIONS (define before including; dtnh.h's options apply too)
      DTNH_NO_STDIO       leave out every file reader and writer (the memory variants stay)
      DTNH_NO_DIRENT      leave out the PGM/PPM folder reader (it needs POSIX opendir)
      DTNH_NO_FSYNC       save without fsync (where POSIX fsync is missing)

   EXAMPLE (fine-tune a source with DTNH(L2-SP); error checks left out)
      dtnh_resnet_config cfg = {0};                  // zero means default
      dtnh_resnet_config_from_file("source.safetensors", &scratch, &cfg, &err);
      cfg.num_classes = 5; cfg.height = cfg.width_px = 28; cfg.max_batch = 32;
      cfg.roles = DTNH_ROLE_W | DTNH_ROLE_W_SRC | DTNH_ROLE_G_J;
      dtnh_resnet_plan_memory(&cfg, 1, &plan, &err);  // exact bytes; 1: momentum's vector
      dtnh_arena_init(&pa, malloc(plan.persistent), plan.persistent);
      dtnh_arena_init(&sa, malloc(plan.step_train), plan.step_train);
      dtnh_resnet_init(&net, &cfg, &pa, &err);
      dtnh_resnet_load_file(&net, "source.safetensors", &sa, NULL, &report, &err);
      dtnh_copy(net.params.total, net.params.w, net.params.w_src);   // w_s for L2-SP
      dtnh_optim_init(&opt, &optim_cfg, &net.params, &pa, &err);
      for (;;) {
          dtnh_arena_reset(&sa, 0);
          dtnh_resnet_forward(&net, &x, &sa, &logits, &err);
          dtnh_softmax_cross_entropy(n, 5, logits.data, labels, dlogits, &loss, &err);
          dtnh_resnet_backward(&net, dlogits, NULL, NULL, 0, &err);   // g_J
          dtnh_step_l2sp(&opt, NULL, NULL, &net.params, net.params.g_j, &stats, &err);
      }
      dtnh_resnet_save(&net, "tuned.safetensors", &err);   // loads into torchvision

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
