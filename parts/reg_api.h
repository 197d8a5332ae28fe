/* ============================================================================================
   Regularizers
   Each writes its value and its gradient into g_Omega only, never into g_J, so the DTNH step
   can tell the two apart. Coefficients are inside: g_Omega is already weighted.
   ============================================================================================ */

/* L2-SP (dtnh_l2sp_config in dtnh.h; rc NULL: alpha = beta = 0.01): adds its gradient to
   g_omega (a flat vector over p) on the trainable views and stores its value in *value. The
   fused dtnh_step_l2sp needs neither: this is for composing regularizers and for checks. */
DTNHDEF dtnh_status dtnh_reg_l2sp(const dtnh_l2sp_config *rc, const dtnh_params *p,
                                  float *g_omega, double *value, dtnh_error *err);
/* Plain L2 toward zero, lambda/2 ||w||^2 over the trainable views in `groups` (0: all): the
   weight decay of plain fine-tuning, and the head term of DELTA (groups DTNH_GROUP_HEAD).
   Adds to g_omega; lambda must be > 0. */
DTNHDEF dtnh_status dtnh_reg_l2(double lambda, unsigned groups, const dtnh_params *p,
                                float *g_omega, double *value, dtnh_error *err);

/* ---- distances between feature maps ([n, C, ...] tensors; the batch is averaged) ---------- */

/* alpha/2 * (1/n) * sum over samples, channels c and positions of weight[c] * (f - s)^2
   (channel_weight NULL: all 1). df (may be NULL; f's size) is overwritten with the gradient
   with respect to f. *value (may be NULL) gets the value. */
DTNHDEF dtnh_status dtnh_feature_distance(const dtnh_tensor *f, const dtnh_tensor *s,
                                          const float *channel_weight, double alpha, float *df,
                                          double *value, dtnh_error *err);
/* Attention transfer (Zagoruyko & Komodakis 2017, their code's at_loss): per sample the
   spatial map A = sum_c F_c^2, normalised q = A / max(||A||, 1e-12); the value is
   alpha/2 * mean over samples and positions of (q(f) - q(s))^2. df and value as above. */
DTNHDEF dtnh_status dtnh_attention_distance(const dtnh_tensor *f, const dtnh_tensor *s,
                                            double alpha, float *df, double *value,
                                            dtnh_error *err);

/* ============================================================================================
   Feature-map regularizers on ResNet-18
   The target's hooked layers against the same layers of the source model (weights w_s, BN
   statistics of the source, evaluation mode): feature-map distillation (the paper's
   KnowDist, Eq. 3), DELTA (Li et al., ICLR 2019) and attention transfer. The g_Omega backward
   starts at the hooks, reuses the target's forward and writes only g_Omega.
   ============================================================================================ */

typedef enum dtnh_fmap_kind {
    DTNH_FMAP_DISTANCE = 0, /* alpha/2 mean_batch sum_l ||F_l(w,x) - F_l(w_s,x)||^2 */
    DTNH_FMAP_DELTA = 1,    /* the same, channel c of layer l weighted by C_l * a_lc, where
                               a_l (summing to 1) is DELTA's attention: uniform attention
                               gives the plain distance (the DELTA code's factor C) */
    DTNH_FMAP_ATTENTION = 2 /* alpha/2 sum_l dtnh_attention_distance at each hook */
} dtnh_fmap_kind;

/* Zero means default everywhere. */
typedef struct dtnh_fmap_config {
    dtnh_fmap_kind kind;
    double alpha;                             /* 0 means 0.01 */
    const char *hooks[DTNH_RESNET_MAX_HOOKS]; /* the target's hooks to use; none: layer1..4 */
    int hook_count;
    double temperature; /* DELTA's softmax temperature: 0 means 5 */
} dtnh_fmap_config;

typedef struct dtnh_fmap_reg {
    dtnh_fmap_config cfg;    /* defaults filled in; hook names point into hook_name */
    char hook_name[DTNH_RESNET_MAX_HOOKS][DTNH_NAME_SIZE];
    dtnh_resnet *target;
    dtnh_resnet source;      /* forward only: reads target->params.w_src, frozen statistics */
    int target_hook[DTNH_RESNET_MAX_HOOKS], source_hook[DTNH_RESNET_MAX_HOOKS];
    int channels[DTNH_RESNET_MAX_HOOKS];
    float *attention;        /* DELTA: channels[0] + channels[1] + ... weights, layer by layer */
    int attention_ready;     /* computed or loaded */
} dtnh_fmap_reg;

/* Sets the regularizer up on a target built with these hooks and with a w_src vector holding
   the source weights. The source's BN statistics come from stats_from (may be NULL: the
   target's own, so call this before training changes them); its shapes must be the target's.
   Takes the source copy's structure and DELTA's weights from the persistent arena. */
DTNHDEF dtnh_status dtnh_fmap_reg_init(dtnh_fmap_reg *r, const dtnh_fmap_config *cfg,
                                       dtnh_resnet *target, const dtnh_resnet *stats_from,
                                       dtnh_arena *persistent, dtnh_error *err);
/* After the target's training forward on x (and before or after its g_J backward): runs the
   source on x, stores the value in *value (may be NULL) and backpropagates from the hooks into
   grad (a flat vector over the target's params; overwritten on the trainable views, or added
   to with accumulate). dlogits NULL, the DTNH way: grad is g_Omega alone. dlogits given: the
   loss gradient goes back in the same pass and grad gets g_J + g_Omega (plain regularized
   fine-tuning, one backward). Uses the step arena above the forward's tensors, and gives it
   back; a counting step arena only counts. */
DTNHDEF dtnh_status dtnh_fmap_reg_compute(dtnh_fmap_reg *r, const dtnh_tensor *x,
                                          dtnh_arena *step, const float *dlogits, float *grad,
                                          int accumulate, double *value, dtnh_error *err);

/* DELTA's attention, once per run: for each hooked layer and channel, how much the mean
   cross-entropy of net on the batches (x[b], labels[b]) rises when the channel is zeroed; per
   layer z-scored (population std) and passed through softmax(z / temperature). net is the
   source backbone with a head trained on the target (train the head alone first; often the
   target itself at that point), built with the same hooks. */
DTNHDEF dtnh_status dtnh_fmap_reg_attention(dtnh_fmap_reg *r, dtnh_resnet *net, int batches,
                                            const dtnh_tensor *x, const int *const *labels,
                                            dtnh_arena *step, dtnh_error *err);
/* Turns per-channel loss rises into DELTA's weights (z-score, softmax with temperature),
   in place over `count` values. */
DTNHDEF void dtnh_delta_weights(int count, float *rise_to_weight, double temperature);
#ifndef DTNH_NO_STDIO
/* The attention as a safetensors file (one F32 tensor "delta.<hook>" of C weights per hook,
   written atomically), and read back; the hooks and channel counts must match, and nothing is
   changed when they do not. scratch holds the file's header while loading. */
DTNHDEF dtnh_status dtnh_fmap_reg_save_attention(const dtnh_fmap_reg *r, const char *path,
                                                 dtnh_error *err);
DTNHDEF dtnh_status dtnh_fmap_reg_load_attention(dtnh_fmap_reg *r, const char *path,
                                                 dtnh_arena *scratch, dtnh_error *err);
#endif
