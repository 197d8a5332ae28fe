/* ============================================================================================
   Checkpoints
   The whole state of a training run in ONE safetensors file, so a run cut off anywhere (power,
   SIGKILL) resumes with bit-identical weights: the network's state_dict (torchvision names, so
   the file is also a weights file dtnh_resnet_load reads), optionally the source weights w_s,
   the optimizer's state, a minibatch stream, named RNG states and the iteration. Scalars live
   in the header's metadata ("dtnh.iteration", "dtnh.rng.<name>", ...). Saved atomically:
   written to "<path>.tmp", flushed, fsync'd, renamed (dtnh_st_save).
   ============================================================================================ */

#define DTNH_CKPT_MAX_RNGS 4
#define DTNH_CKPT_MAX_META 8

/* What a checkpoint holds. A NULL pointer (or a zero count) leaves that part out of the file;
   loading demands exactly the parts the struct names, with the shapes they have now. */
typedef struct dtnh_checkpoint {
    dtnh_resnet *net;   /* weights and BN buffers (required) */
    int with_source;    /* 1: also w_s, as "dtnh.w_src.<name>" (the L2-SP anchor) */
    dtnh_optim *optim;  /* m, v, per-view step counts and the step: "dtnh.optim.*" */
    dtnh_batch_stream *stream; /* the shuffled order and position: "dtnh.stream.*" */
    dtnh_rng *rngs[DTNH_CKPT_MAX_RNGS]; /* saved as metadata "dtnh.rng.<name>" */
    const char *rng_names[DTNH_CKPT_MAX_RNGS];
    int rng_count;
    long iteration;     /* training steps done: saved, and set again by a load */
    /* The caller's own metadata (a run's command line, say): written on save, ignored on load
       (read it with dtnh_st_meta_get). Keys must not start with "dtnh.". */
    dtnh_st_meta meta[DTNH_CKPT_MAX_META];
    int meta_count;
} dtnh_checkpoint;

/* Writes the checkpoint as a safetensors file into buf (capacity bytes); *size gets its length,
   buf NULL only computes it. scratch holds the tensor table meanwhile and is given back; with a
   counting scratch arena only the scratch is counted (nothing else happens). */
DTNHDEF dtnh_status dtnh_checkpoint_save_memory(const dtnh_checkpoint *c, dtnh_arena *scratch,
                                                void *buf, size_t capacity, size_t *size,
                                                dtnh_error *err);
/* Restores the parts c names from an opened file. Everything is checked first (every tensor
   present with its shape and dtype, finite floats, optimizer layout and stream order valid,
   metadata well formed) and nothing is written until all of it passed; only an I/O fault while
   copying can leave a partial state. scratch: as above (a counting one counts). */
DTNHDEF dtnh_status dtnh_checkpoint_load(dtnh_checkpoint *c, dtnh_st_file *f, dtnh_arena *scratch,
                                         dtnh_error *err);
#ifndef DTNH_NO_STDIO
/* The same through a file: saved atomically (a crash leaves the previous checkpoint whole);
   loading holds the file's header in scratch meanwhile and gives it back. */
DTNHDEF dtnh_status dtnh_checkpoint_save(const dtnh_checkpoint *c, const char *path,
                                         dtnh_arena *scratch, dtnh_error *err);
DTNHDEF dtnh_status dtnh_checkpoint_load_file(dtnh_checkpoint *c, const char *path,
                                              dtnh_arena *scratch, dtnh_error *err);
#endif

/* ============================================================================================
   Numeric guards
   A NaN or Inf anywhere in a training step's inputs, found before the update, so the step can
   be skipped with the weights as they were (and the run go on, say with a smaller lr).
   ============================================================================================ */

/* DTNH_ERR_NUMERIC naming the first non-finite value among: the loss, the weights (every
   view, frozen ones too), w_s, g_J and g_Omega (trainable views; either may be NULL) and the
   optimizer's m and v (o may be NULL). Nothing is changed. One read of each vector. */
DTNHDEF dtnh_status dtnh_check_step_finite(const dtnh_params *p, const dtnh_optim *o, double loss,
                                           const float *g_j, const float *g_omega,
                                           dtnh_error *err);
