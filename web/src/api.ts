// The seed's HTTP protocol: `POST /service/...` with protobuf bodies generated from proto/
// (protobufjs), the login session in the body's `session_id`. Business errors arrive as
// HTTP 200 with `success=false` and the server's own words in field 3.
import { bite_im as pb } from "./gen/proto.js";

export { pb };
export type UserInfo = pb.UserInfo;
export type MessageInfo = pb.MessageInfo;
export type ChatSessionInfo = pb.ChatSessionInfo;
export type FriendEvent = pb.FriendEvent;
export const MessageType = pb.MessageType;
export const NotifyType = pb.NotifyType;

/** An error the server reported (`errmsg`), shown to the user exactly as worded. */
export class ServerError extends Error {
  constructor(message: string, readonly route: string) {
    super(message);
  }
}

interface Reply {
  success?: boolean | null;
  errmsg?: string | null;
  errormsg?: string | null;
}
interface Codec<T> {
  encode(message: T): { finish(): Uint8Array };
  decode(bytes: Uint8Array): T;
}

let counter = 0;
export function requestId(): string {
  counter += 1;
  return `web-${Date.now().toString(36)}-${counter}`;
}

/** int64 fields decode as numbers (`--force-number`); this also copes with Long objects. */
export function num(v: unknown): number {
  if (typeof v === "number") return v;
  if (v && typeof v === "object" && "toNumber" in v) return (v as { toNumber(): number }).toNumber();
  return Number(v ?? 0);
}

async function post<Req, Rsp extends Reply>(
  route: string,
  reqType: Codec<Req>,
  rspType: Codec<Rsp>,
  req: Req,
): Promise<Rsp> {
  let res: Response;
  try {
    res = await fetch(`service/${route}`, {
      method: "POST",
      headers: { "content-type": "application/x-protobuf", accept: "application/x-protobuf" },
      body: reqType.encode(req).finish() as BodyInit,
    });
  } catch {
    throw new Error("cannot reach the server; check the connection and retry");
  }
  if (!res.ok) throw new Error(`the server answered HTTP ${res.status} ${res.statusText}`);
  const rsp = rspType.decode(new Uint8Array(await res.arrayBuffer()));
  if (!rsp.success) throw new ServerError(rsp.errmsg || rsp.errormsg || "request failed", route);
  return rsp;
}

/** The session-scoped API of one logged-in user. */
export class Api {
  constructor(readonly session: string) {}

  private s<T extends object>(body: T): T & { requestId: string; sessionId: string } {
    return { requestId: requestId(), sessionId: this.session, ...body };
  }

  async me(): Promise<UserInfo> {
    const rsp = await post("user/get_user_info", pb.GetUserInfoReq, pb.GetUserInfoRsp, this.s({}));
    return rsp.userInfo as UserInfo;
  }
  setAvatar(avatar: Uint8Array) {
    return post("user/set_avatar", pb.SetUserAvatarReq, pb.SetUserAvatarRsp, this.s({ avatar }));
  }
  setNickname(nickname: string) {
    return post("user/set_nickname", pb.SetUserNicknameReq, pb.SetUserNicknameRsp, this.s({ nickname }));
  }
  setDescription(description: string) {
    return post("user/set_description", pb.SetUserDescriptionReq, pb.SetUserDescriptionRsp, this.s({ description }));
  }
  setPhone(phoneNumber: string, phoneVerifyCodeId: string, phoneVerifyCode: string) {
    const body = this.s({ phoneNumber, phoneVerifyCodeId, phoneVerifyCode });
    return post("user/set_phone", pb.SetUserPhoneNumberReq, pb.SetUserPhoneNumberRsp, body);
  }
  async friends(): Promise<UserInfo[]> {
    const rsp = await post("friend/get_friend_list", pb.GetFriendListReq, pb.GetFriendListRsp, this.s({}));
    return rsp.friendList as UserInfo[];
  }
  async searchUsers(searchKey: string): Promise<UserInfo[]> {
    const rsp = await post("friend/search_friend", pb.FriendSearchReq, pb.FriendSearchRsp, this.s({ searchKey }));
    return rsp.userInfo as UserInfo[];
  }
  apply(respondentId: string) {
    return post("friend/add_friend_apply", pb.FriendAddReq, pb.FriendAddRsp, this.s({ respondentId }));
  }
  process(notifyEventId: string, applyUserId: string, agree: boolean) {
    const body = this.s({ notifyEventId, applyUserId, agree });
    return post("friend/add_friend_process", pb.FriendAddProcessReq, pb.FriendAddProcessRsp, body);
  }
  async pending(): Promise<FriendEvent[]> {
    const rsp = await post(
      "friend/get_pending_friend_events",
      pb.GetPendingFriendEventListReq,
      pb.GetPendingFriendEventListRsp,
      this.s({}),
    );
    return rsp.event as FriendEvent[];
  }
  removeFriend(peerId: string) {
    return post("friend/remove_friend", pb.FriendRemoveReq, pb.FriendRemoveRsp, this.s({ peerId }));
  }
  async chats(): Promise<ChatSessionInfo[]> {
    const rsp = await post("friend/get_chat_session_list", pb.GetChatSessionListReq, pb.GetChatSessionListRsp, this.s({}));
    return rsp.chatSessionInfoList as ChatSessionInfo[];
  }
  createGroup(chatSessionName: string, memberIdList: string[]) {
    const body = this.s({ chatSessionName, memberIdList });
    return post("friend/create_chat_session", pb.ChatSessionCreateReq, pb.ChatSessionCreateRsp, body);
  }
  async members(chatSessionId: string): Promise<UserInfo[]> {
    const body = this.s({ chatSessionId });
    const rsp = await post("friend/get_chat_session_member", pb.GetChatSessionMemberReq, pb.GetChatSessionMemberRsp, body);
    return rsp.memberInfoList as UserInfo[];
  }
  /** Up to `msgCount` messages at or before `curTime` (newest when unset), oldest first. */
  async recent(chatSessionId: string, msgCount: number, curTime?: number): Promise<MessageInfo[]> {
    const body = this.s({ chatSessionId, msgCount, ...(curTime === undefined ? {} : { curTime }) });
    const rsp = await post("message_storage/get_recent", pb.GetRecentMsgReq, pb.GetRecentMsgRsp, body);
    return rsp.msgList as MessageInfo[];
  }
  async history(chatSessionId: string, startTime: number, overTime: number): Promise<MessageInfo[]> {
    const body = this.s({ chatSessionId, startTime, overTime });
    const rsp = await post("message_storage/get_history", pb.GetHistoryMsgReq, pb.GetHistoryMsgRsp, body);
    return rsp.msgList as MessageInfo[];
  }
  async searchMessages(chatSessionId: string, searchKey: string): Promise<MessageInfo[]> {
    const body = this.s({ chatSessionId, searchKey });
    const rsp = await post("message_storage/search_history", pb.MsgSearchReq, pb.MsgSearchRsp, body);
    return rsp.msgList as MessageInfo[];
  }
  send(chatSessionId: string, message: pb.MessageContent.$Properties) {
    const body = this.s({ chatSessionId, message });
    return post("message_transmit/new_message", pb.NewMessageReq, pb.NewMessageRsp, body);
  }
  async file(fileId: string): Promise<Uint8Array> {
    const rsp = await post("file/get_single_file", pb.GetSingleFileReq, pb.GetSingleFileRsp, this.s({ fileId }));
    return rsp.fileData?.fileContent ?? new Uint8Array();
  }
  async transcribe(speechContent: Uint8Array): Promise<string> {
    const body = this.s({ speechContent });
    const rsp = await post("speech/recognition", pb.SpeechRecognitionReq, pb.SpeechRecognitionRsp, body);
    return rsp.recognitionResult ?? "";
  }
}

/** The routes that need no login. */
export const auth = {
  register(nickname: string, password: string) {
    const body = { requestId: requestId(), nickname, password };
    return post("user/username_register", pb.UserRegisterReq, pb.UserRegisterRsp, body);
  },
  async login(nickname: string, password: string): Promise<string> {
    const body = { requestId: requestId(), nickname, password };
    return (await post("user/username_login", pb.UserLoginReq, pb.UserLoginRsp, body)).loginSessionId ?? "";
  },
  async phoneCode(phoneNumber: string): Promise<string> {
    const body = { requestId: requestId(), phoneNumber };
    return (await post("user/get_phone_verify_code", pb.PhoneVerifyCodeReq, pb.PhoneVerifyCodeRsp, body)).verifyCodeId ?? "";
  },
  phoneRegister(phoneNumber: string, verifyCodeId: string, verifyCode: string) {
    const body = { requestId: requestId(), phoneNumber, verifyCodeId, verifyCode };
    return post("user/phone_register", pb.PhoneRegisterReq, pb.PhoneRegisterRsp, body);
  },
  async phoneLogin(phoneNumber: string, verifyCodeId: string, verifyCode: string): Promise<string> {
    const body = { requestId: requestId(), phoneNumber, verifyCodeId, verifyCode };
    return (await post("user/phone_login", pb.PhoneLoginReq, pb.PhoneLoginRsp, body)).loginSessionId ?? "";
  },
};

export function errorText(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}
