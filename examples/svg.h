/* svg.h - line plots and bar charts as standalone SVG files, for the example programs.
   Written to "<path>.tmp" and renamed, so a failed write never leaves half a plot behind.

   #define SVG_IMPLEMENTATION in one file. Each call returns 0 on success, -1 on an I/O error.
*/
#ifndef DTNH_SVG_H
#define DTNH_SVG_H

typedef struct svg_series {
    const char *label;
    const float *x, *y; /* n points; non-finite y values break the line */
    int n;
} svg_series;

int svg_line_plot(const char *path, const char *title, const char *xlabel, const char *ylabel,
                  const svg_series *series, int count);
/* Bars with optional error bars (err may be NULL). */
int svg_bar_chart(const char *path, const char *title, const char *ylabel, const char *const *labels,
                  const float *values, const float *err, int count);

#endif

#ifdef SVG_IMPLEMENTATION
#include <math.h>
#include <stdio.h>
#include <string.h>

#define SVG__W 720
#define SVG__H 440
#define SVG__L 70  /* left margin: y tick labels */
#define SVG__R 170 /* right margin: legend */
#define SVG__T 40
#define SVG__B 55

static const char *svg__colors[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e",
                                    "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"};

static int svg__finite(float v) { return v - v == 0.0f; }

static void svg__text(FILE *f, const char *s) {
    for (; *s; s++) {
        if (*s == '<') fputs("&lt;", f);
        else if (*s == '>') fputs("&gt;", f);
        else if (*s == '&') fputs("&amp;", f);
        else fputc(*s, f);
    }
}

/* A "nice" tick step near range/5: 1, 2 or 5 times a power of ten. */
static double svg__tick_step(double range) {
    double raw = range / 5, mag = pow(10, floor(log10(raw))), r = raw / mag;
    return (r < 1.5 ? 1 : r < 3.5 ? 2 : r < 7.5 ? 5 : 10) * mag;
}

static FILE *svg__open(const char *path, char *tmp, size_t tmpsize) {
    FILE *f;
    snprintf(tmp, tmpsize, "%s.tmp", path);
    f = fopen(tmp, "w");
    if (!f) return NULL;
    fprintf(f, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" "
               "font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n",
            SVG__W, SVG__H);
    return f;
}

static int svg__close(FILE *f, const char *path, const char *tmp) {
    int bad;
    fputs("</svg>\n", f);
    bad = ferror(f);
    if (fclose(f) != 0 || bad) {
        remove(tmp);
        return -1;
    }
    if (rename(tmp, path) != 0) {
        remove(tmp);
        return -1;
    }
    return 0;
}

static void svg__frame(FILE *f, const char *title, const char *xlabel, const char *ylabel) {
    int pw = SVG__W - SVG__L - SVG__R, ph = SVG__H - SVG__T - SVG__B;
    fprintf(f, "<text x=\"%d\" y=\"24\" font-size=\"15\" text-anchor=\"middle\">", SVG__L + pw / 2);
    svg__text(f, title);
    fprintf(f, "</text>\n<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"none\" stroke=\"#444\"/>\n",
            SVG__L, SVG__T, pw, ph);
    if (xlabel) {
        fprintf(f, "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\">", SVG__L + pw / 2, SVG__H - 12);
        svg__text(f, xlabel);
        fputs("</text>\n", f);
    }
    if (ylabel) {
        fprintf(f, "<text transform=\"translate(16,%d) rotate(-90)\" text-anchor=\"middle\">", SVG__T + ph / 2);
        svg__text(f, ylabel);
        fputs("</text>\n", f);
    }
}

static void svg__yticks(FILE *f, double lo, double hi) {
    int ph = SVG__H - SVG__T - SVG__B, pw = SVG__W - SVG__L - SVG__R;
    double step = svg__tick_step(hi - lo), v;
    for (v = ceil(lo / step) * step; v <= hi + step * 1e-6; v += step) {
        double y = SVG__T + ph * (1 - (v - lo) / (hi - lo));
        fprintf(f, "<line x1=\"%d\" x2=\"%d\" y1=\"%.1f\" y2=\"%.1f\" stroke=\"#ddd\"/>", SVG__L, SVG__L + pw, y, y);
        fprintf(f, "<text x=\"%d\" y=\"%.1f\" text-anchor=\"end\">%g</text>\n", SVG__L - 6, y + 4, fabs(v) < step * 1e-6 ? 0.0 : v);
    }
}

static void svg__legend(FILE *f, int i, const char *label) {
    int x = SVG__W - SVG__R + 12, y = SVG__T + 10 + 18 * i;
    fprintf(f, "<line x1=\"%d\" x2=\"%d\" y1=\"%d\" y2=\"%d\" stroke=\"%s\" stroke-width=\"2.5\"/>", x, x + 20, y, y,
            svg__colors[i % 8]);
    fprintf(f, "<text x=\"%d\" y=\"%d\">", x + 26, y + 4);
    svg__text(f, label ? label : "");
    fputs("</text>\n", f);
}

/* The data range of every finite point, widened a little so lines do not touch the frame. */
static void svg__range(const svg_series *s, int count, double *x0, double *x1, double *y0, double *y1) {
    int i, k, any = 0;
    *x0 = *y0 = 1e300;
    *x1 = *y1 = -1e300;
    for (k = 0; k < count; k++)
        for (i = 0; i < s[k].n; i++) {
            if (!svg__finite(s[k].y[i]) || !svg__finite(s[k].x[i])) continue;
            any = 1;
            if (s[k].x[i] < *x0) *x0 = s[k].x[i];
            if (s[k].x[i] > *x1) *x1 = s[k].x[i];
            if (s[k].y[i] < *y0) *y0 = s[k].y[i];
            if (s[k].y[i] > *y1) *y1 = s[k].y[i];
        }
    if (!any) *x0 = *y0 = 0, *x1 = *y1 = 1;
    if (*x1 <= *x0) *x1 = *x0 + 1;
    if (*y1 <= *y0) *y1 = *y0 + 1;
    {
        double pad = 0.05 * (*y1 - *y0);
        *y0 -= pad;
        *y1 += pad;
    }
}

int svg_line_plot(const char *path, const char *title, const char *xlabel, const char *ylabel,
                  const svg_series *series, int count) {
    char tmp[1100];
    double x0, x1, y0, y1, step, v;
    int pw = SVG__W - SVG__L - SVG__R, ph = SVG__H - SVG__T - SVG__B, k, i;
    FILE *f = svg__open(path, tmp, sizeof tmp);
    if (!f) return -1;
    svg__range(series, count, &x0, &x1, &y0, &y1);
    svg__frame(f, title, xlabel, ylabel);
    svg__yticks(f, y0, y1);
    step = svg__tick_step(x1 - x0);
    for (v = ceil(x0 / step) * step; v <= x1 + step * 1e-6; v += step)
        fprintf(f, "<text x=\"%.1f\" y=\"%d\" text-anchor=\"middle\">%g</text>\n", SVG__L + pw * (v - x0) / (x1 - x0),
                SVG__T + ph + 16, v);
    for (k = 0; k < count; k++) {
        int pen_down = 0;
        fprintf(f, "<path fill=\"none\" stroke=\"%s\" stroke-width=\"1.8\" d=\"", svg__colors[k % 8]);
        for (i = 0; i < series[k].n; i++) {
            double px, py;
            if (!svg__finite(series[k].y[i])) {
                pen_down = 0;
                continue;
            }
            px = SVG__L + pw * (series[k].x[i] - x0) / (x1 - x0);
            py = SVG__T + ph * (1 - (series[k].y[i] - y0) / (y1 - y0));
            fprintf(f, "%c%.1f %.1f ", pen_down ? 'L' : 'M', px, py);
            pen_down = 1;
        }
        fputs("\"/>\n", f);
        svg__legend(f, k, series[k].label);
    }
    return svg__close(f, path, tmp);
}

int svg_bar_chart(const char *path, const char *title, const char *ylabel, const char *const *labels,
                  const float *values, const float *err, int count) {
    char tmp[1100];
    double lo = 0, hi = 0;
    int pw = SVG__W - SVG__L - SVG__R, ph = SVG__H - SVG__T - SVG__B, i;
    FILE *f = svg__open(path, tmp, sizeof tmp);
    if (!f) return -1;
    for (i = 0; i < count; i++) {
        double top = values[i] + (err ? err[i] : 0);
        if (svg__finite(values[i]) && top > hi) hi = top;
    }
    if (hi <= lo) hi = 1;
    hi *= 1.1;
    svg__frame(f, title, NULL, ylabel);
    svg__yticks(f, lo, hi);
    for (i = 0; i < count; i++) {
        double slot = (double)pw / count, bw = slot * 0.6, x = SVG__L + slot * i + (slot - bw) / 2;
        double v = svg__finite(values[i]) ? values[i] : 0, y = SVG__T + ph * (1 - (v - lo) / (hi - lo));
        fprintf(f, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"%s\"/>\n", x, y, bw,
                SVG__T + ph - y, svg__colors[i % 8]);
        if (err && svg__finite(err[i])) {
            double ya = SVG__T + ph * (1 - (v + err[i] - lo) / (hi - lo)), yb = SVG__T + ph * (1 - (v - err[i] - lo) / (hi - lo));
            fprintf(f, "<line x1=\"%.1f\" x2=\"%.1f\" y1=\"%.1f\" y2=\"%.1f\" stroke=\"black\"/>\n", x + bw / 2, x + bw / 2, ya, yb);
        }
        {
            double top = err && svg__finite(err[i]) ? SVG__T + ph * (1 - (v + err[i] - lo) / (hi - lo)) : y;
            fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%.2f</text>\n", x + bw / 2, top - 4, v);
        }
        fprintf(f, "<text x=\"%.1f\" y=\"%d\" text-anchor=\"middle\">", x + bw / 2, SVG__T + ph + 16);
        svg__text(f, labels[i]);
        fputs("</text>\n", f);
    }
    return svg__close(f, path, tmp);
}
#endif
