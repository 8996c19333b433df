from keras_peft.mam.config import MAMConfig
