/* ============================================================================================
   The DTNH direction
   Algorithm 1 of the paper: when g_Omega pulls against g_J, its component along g_J is
   removed, so the step d = g_J + g_Omega never raises the empirical loss to first order.
   ============================================================================================ */

enum {
    DTNH_MODE_DTNH = 0, /* the paper: project g_Omega when <g_J, g_Omega> < 0 */
    DTNH_MODE_SUM = 1   /* vanilla regularized fine-tuning: d = g_J + g_Omega */
};
enum {
    DTNH_SCOPE_GLOBAL = 0,    /* one projection over every view taking part (the paper's w) */
    DTNH_SCOPE_PER_TENSOR = 1 /* each view projected on its own */
};

/* ||g_J||^2 below this and nothing is projected (the projection divides by it). */
#define DTNH_DIRECTION_EPS 1e-20

/* Zero means default everywhere. */
typedef struct dtnh_direction_config {
    int mode;        /* DTNH_MODE_DTNH (default) or DTNH_MODE_SUM */
    int scope;       /* DTNH_SCOPE_GLOBAL (default) or DTNH_SCOPE_PER_TENSOR */
    double eps;      /* 0 means DTNH_DIRECTION_EPS */
    unsigned groups; /* views taking part: trainable and in these groups; 0 means every
                        trainable view. The others get d = g_J + g_Omega. */
} dtnh_direction_config;

/* What one step looked like. Norms, cosine and angles cover every trainable view; angles are
   in degrees, and a zero vector counts as orthogonal to everything (90). */
typedef struct dtnh_direction_stats {
    double loss;              /* J: the caller fills it; nothing here writes it */
    double omega;             /* Omega: the regularizer, or the fused L2-SP step, fills it */
    double cos_j_omega;       /* cos(g_J, g_Omega), before any projection */
    double projected;         /* global: 1 or 0; per tensor: the fraction of views projected */
    double norm_g_j, norm_g_omega;
    double angle_d_j;         /* Angle 1: angle(d, g_J) */
    double angle_d_omega;     /* Angle 2: angle(d, g_Omega) */
    double angle_sum_j;       /* Angle 3: angle(g_J + g_Omega, g_J) */
    double angle_sum_omega;   /* Angle 4: angle(g_J + g_Omega, g_Omega) */
    int views, views_projected; /* views taking part, and how many of them were projected */
} dtnh_direction_stats;

/* d = g_J + g_Omega, with g_Omega projected as the config says; g_j and g_omega are flat
   vectors over the store p and are not changed. d may be g_omega or g_j itself (in place);
   views that are not trainable are left alone in d. st (may be NULL) gets every field but
   loss and omega. A NaN or Inf in either gradient: DTNH_ERR_NUMERIC naming the view, and
   nothing written. */
DTNHDEF dtnh_status dtnh_direction(const dtnh_direction_config *cfg, const dtnh_params *p,
                                   const float *g_j, const float *g_omega, float *d,
                                   dtnh_direction_stats *st, dtnh_error *err);
/* The same on n loose floats, as one trainable tensor (cfg may be NULL). */
DTNHDEF dtnh_status dtnh_direction_flat(const dtnh_direction_config *cfg, size_t n,
                                        const float *g_j, const float *g_omega, float *d,
                                        dtnh_direction_stats *st, dtnh_error *err);

/* ============================================================================================
   Learning-rate schedules and coefficient decay
   Pure functions of the iteration, with torch.optim.lr_scheduler's closed forms.
   ============================================================================================ */

enum {
    DTNH_SCHEDULE_CONSTANT = 0,
    DTNH_SCHEDULE_STEP = 1,  /* MultiStepLR: times gamma at each milestone (the paper: /10) */
    DTNH_SCHEDULE_COSINE = 2 /* CosineAnnealingLR, held at lr_min after `total` iterations */
};
#define DTNH_MAX_MILESTONES 8

typedef struct dtnh_schedule {
    int kind;
    long milestones[DTNH_MAX_MILESTONES]; /* step: ascending iteration counts */
    int n_milestones;
    double gamma;  /* step: 0 means 0.1 */
    long total;    /* cosine: iterations from the base lr down to lr_min (> 0) */
    double lr_min; /* cosine */
} dtnh_schedule;

/* The lr for the step that follows `iteration` finished steps (s NULL: constant). */
DTNHDEF double dtnh_schedule_lr(const dtnh_schedule *s, double base_lr, long iteration);
DTNHDEF dtnh_status dtnh_schedule_check(const dtnh_schedule *s, dtnh_error *err);
/* A regularizer coefficient decayed per epoch: coef * decay^epoch; decay 0 means constant. */
DTNHDEF double dtnh_coef_decayed(double coef, double decay, long epoch);

/* ============================================================================================
   Optimizers
   torch.optim's SGD (momentum, Nesterov; dampening 0), Adam and AdamW, consuming the
   direction d exactly where torch consumes the gradient. Weight decay is a regularizer in
   g_Omega (so DTNH sees it); only AdamW keeps its decoupled decay.
   ============================================================================================ */

enum { DTNH_OPTIM_SGD = 0, DTNH_OPTIM_ADAM = 1, DTNH_OPTIM_ADAMW = 2 };
#define DTNH_MAX_LR_RULES 4

/* A view whose groups meet `groups` learns at mult times the lr; the first match wins,
   unmatched views use 1. Rules with groups 0 are unused. */
typedef struct dtnh_lr_rule {
    unsigned groups;
    double mult;
} dtnh_lr_rule;

/* Zero means default everywhere. */
typedef struct dtnh_optim_config {
    int kind;            /* DTNH_OPTIM_SGD (default), _ADAM, _ADAMW */
    double lr;           /* base lr: 0 means 0.01 (SGD) or 0.001 (Adam, AdamW) */
    double momentum;     /* SGD: 0 is plain SGD */
    int nesterov;        /* SGD: needs momentum > 0 */
    double beta1, beta2; /* Adam: 0 means 0.9 and 0.999 */
    double eps;          /* Adam: 0 means 1e-8 */
    double weight_decay; /* AdamW's decoupled decay: 0 means 0.01, as torch */
    dtnh_lr_rule lr_rules[DTNH_MAX_LR_RULES];
    dtnh_schedule schedule;
} dtnh_optim_config;

#define DTNH_NO_STATE ((size_t)-1)

/* Per view: where its state starts in m and v (DTNH_NO_STATE: frozen at init), and how many
   steps it took (torch keeps both per parameter). */
typedef struct dtnh_optim_slot {
    size_t state_offset;
    long steps;
} dtnh_optim_slot;

typedef struct dtnh_optim {
    dtnh_optim_config cfg; /* with the defaults filled in */
    long step;             /* steps taken: the schedule's iteration */
    double lr;             /* the scheduled base lr of the last step */
    float *m, *v;          /* momentum / first moment, second moment; NULL when unused */
    size_t state_count;    /* floats in each of m and v: the views trainable at init */
    dtnh_optim_slot *slots;
    int view_count;
} dtnh_optim;

/* Takes the state (zeroed) from the arena, only for the views trainable now; a counting arena
   or a counting store (views NULL, every view counted) gives the size. Views made trainable
   later need a new init. */
DTNHDEF dtnh_status dtnh_optim_init(dtnh_optim *o, const dtnh_optim_config *cfg,
                                    const dtnh_params *p, dtnh_arena *a, dtnh_error *err);
/* One update of p->w from d (a flat vector over p) on every trainable view. */
DTNHDEF dtnh_status dtnh_optim_step(dtnh_optim *o, dtnh_params *p, const float *d,
                                    dtnh_error *err);
/* The lr view `index` gets at the next step (schedule and rules). */
DTNHDEF double dtnh_optim_view_lr(const dtnh_optim *o, const dtnh_params *p, int index);

/* ============================================================================================
   Fused steps
   Direction and update in two passes over the flat vectors (one for the dot products, one
   for the update), with no d stored. L2-SP needs no stored g_Omega at all.
   ============================================================================================ */

/* The L2 family, whose gradient is a closed form: backbone views are pulled toward w_s with
   alpha, head views toward 0 with beta: Omega = alpha/2 ||w_b - w_s||^2 + beta/2 ||w_h||^2.
   Zero means default. */
typedef struct dtnh_l2sp_config {
    double alpha;     /* 0 means 0.01 */
    double beta;      /* 0 means 0.01 */
    int kernels_only; /* 1: only the backbone's KERNEL views are pulled (BN and biases free) */
    int toward_zero;  /* 1: the backbone is pulled toward 0 too: plain L2 weight decay */
} dtnh_l2sp_config;

/* dtnh_direction then dtnh_optim_step, fused: g_j and g_omega are left unchanged. A NaN or
   Inf: DTNH_ERR_NUMERIC naming the view, and nothing changed; except in mode SUM without st,
   which takes a single pass and can only report it after the update. */
DTNHDEF dtnh_status dtnh_step(dtnh_optim *o, const dtnh_direction_config *dc, dtnh_params *p,
                              const float *g_j, const float *g_omega, dtnh_direction_stats *st,
                              dtnh_error *err);
/* The same with g_Omega from L2-SP (rc NULL: defaults) over p->w and p->w_src; st->omega
   gets its value when st is given. */
DTNHDEF dtnh_status dtnh_step_l2sp(dtnh_optim *o, const dtnh_direction_config *dc,
                                   const dtnh_l2sp_config *rc, dtnh_params *p, const float *g_j,
                                   dtnh_direction_stats *st, dtnh_error *err);
