/* reg: placeholder */
