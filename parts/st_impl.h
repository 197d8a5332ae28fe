/* st: placeholder */
