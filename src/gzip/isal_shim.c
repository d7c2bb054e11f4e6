/* A narrow C face over ISA-L's inflate, so that Rust never has to mirror `struct inflate_state`
 * (whose layout follows ISA-L's build-time table sizes). Built by build.rs with feature `isal`. */
#include <stdint.h>
#include <stdlib.h>
#include <isa-l/igzip_lib.h>

struct inflate_state *mimic_eye_isal_new(void) {
	struct inflate_state *s = malloc(sizeof *s);
	if (s != NULL) {
		isal_inflate_init(s);
		s->crc_flag = ISAL_GZIP; /* parse the gzip header, check the CRC-32 and length trailer */
	}
	return s;
}

void mimic_eye_isal_free(struct inflate_state *s) { free(s); }

/* Starts the next gzip member of a multi-member file. */
void mimic_eye_isal_reset(struct inflate_state *s) {
	isal_inflate_reset(s);
	s->crc_flag = ISAL_GZIP;
}

/* Decodes from `in` into `out`; `*in_len` and `*out_len` come back as the bytes consumed and
 * produced; `*finished` is set when the member's trailer has been read and checked. Returns
 * ISA-L's code (negative: corrupt input). */
int mimic_eye_isal_inflate(struct inflate_state *s, const uint8_t *in, uint32_t *in_len, uint8_t *out,
			   uint32_t *out_len, int *finished) {
	s->next_in = (uint8_t *)in;
	s->avail_in = *in_len;
	s->next_out = out;
	s->avail_out = *out_len;
	int rc = isal_inflate(s);
	*in_len -= s->avail_in;
	*out_len -= s->avail_out;
	*finished = s->block_state == ISAL_BLOCK_FINISH;
	return rc;
}
