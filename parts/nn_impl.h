/* nn: placeholder */
