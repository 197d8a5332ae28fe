/* ---- optimizers and the DTNH step: placeholder ---- */
