/* cuda_runtime_api.h of CUDA @CUDA_SERIES@ (gpufleet stand-in: the version define as real, no API). */
#if !defined(__CUDA_RUNTIME_API_H__)
#define __CUDA_RUNTIME_API_H__

/** CUDA Runtime API Version */
#define CUDART_VERSION  @CUDART_VERSION@

#endif /* !__CUDA_RUNTIME_API_H__ */
