/* data: placeholder */
